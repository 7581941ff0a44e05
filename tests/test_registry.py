"""Writer schemas from a schema registry: found, unknown (dead letter), unreachable (retry).

The registry here is a minimal local HTTP server speaking the registry's GET /schemas/ids/{id}.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from schemas.codec import RejectedInput, TransientSchemaError, decode_event, encode_event_avro
from schemas.event import Limits
from schemas.registry import schema_json
from streams.config import SchemaRegistrySettings
from streams.registry import RegistrySchemas

KNOWN_ID = 7


class _Registry(BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:
        _Registry.requests.append(self.path)
        if self.path.split("?")[0] == f"/schemas/ids/{KNOWN_ID}":
            body = json.dumps({"schema": json.dumps(schema_json("audit_event"))}).encode()
            self.send_response(200)
        else:
            body = json.dumps({"error_code": 40403, "message": "Schema not found"}).encode()
            self.send_response(404)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def event(schema_id: int) -> bytes:
    return encode_event_avro(
        {
            "event_id": "e1",
            "timestamp": 1_767_225_600_000,
            "machine_id": "m",
            "resource": "r",
            "operation": "GET",
            "outcome": "SUCCESS",
            "source_ip": None,
            "identity_type": None,
            "source": None,
            "attributes": {},
        },
        schema_id=schema_id,
    )


def decode(resolver: RegistrySchemas, value: bytes) -> str:
    now = int(time.time() * 1000)
    return decode_event(
        value, fmt="auto", resolver=resolver, limits=Limits(), now_ms=now
    ).event.event_id


def test_registry_schema_decodes_and_is_cached(registry_url: str) -> None:
    _Registry.requests.clear()
    resolver = RegistrySchemas(SchemaRegistrySettings(url=registry_url))
    assert decode(resolver, event(KNOWN_ID)) == "e1"
    assert decode(resolver, event(KNOWN_ID)) == "e1"
    assert len(_Registry.requests) == 1


def test_unknown_registry_id_is_a_dead_letter(registry_url: str) -> None:
    resolver = RegistrySchemas(SchemaRegistrySettings(url=registry_url))
    with pytest.raises(RejectedInput) as e:
        decode(resolver, event(99))
    assert e.value.reason == "unknown_schema_id"


def test_unreachable_registry_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resolver = RegistrySchemas(SchemaRegistrySettings(url=f"http://127.0.0.1:{port}"))
    with pytest.raises(TransientSchemaError):
        decode(resolver, event(KNOWN_ID))
