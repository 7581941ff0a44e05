"""A minimal local schema registry for tests: GET /schemas/ids/{id} answers the event schema
for the ids in `RegistryStub.known` and 404 (error 40403) for the others."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from schemas.registry import schema_json


class RegistryStub(BaseHTTPRequestHandler):
    known: set[int] = set()  # class-wide: a test changes it while the server runs
    requests: list[str] = []

    def do_GET(self) -> None:
        RegistryStub.requests.append(self.path)
        schema_id = self.path.split("?")[0].rsplit("/", 1)[-1]
        if schema_id.isdigit() and int(schema_id) in RegistryStub.known:
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


@contextmanager
def serve_registry(*known: int) -> Iterator[str]:
    """Run the stub on a free port with `known` ids; yields its URL."""
    RegistryStub.known = set(known)
    RegistryStub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RegistryStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
