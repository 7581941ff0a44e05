"""Writer schemas from a schema registry: found, unknown (dead letter), unreachable (retry).

The registry here is a minimal local HTTP server speaking the registry's GET /schemas/ids/{id}.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from schemas.codec import RejectedInput, TransientSchemaError, decode_event, encode_event_avro
from schemas.event import Limits
from streams.ops.config import SchemaRegistrySettings
from streams.ops.registry import RegistrySchemas
from tests.registry_stub import RegistryStub, serve_registry

KNOWN_ID = 7


@pytest.fixture
def registry_url() -> Iterator[str]:
    with serve_registry(KNOWN_ID) as url:
        yield url


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
    RegistryStub.requests.clear()
    resolver = RegistrySchemas(SchemaRegistrySettings(url=registry_url))
    assert decode(resolver, event(KNOWN_ID)) == "e1"
    assert decode(resolver, event(KNOWN_ID)) == "e1"
    assert len(RegistryStub.requests) == 1


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
