"""Writer schemas from a Confluent-compatible schema registry, cached by id."""

from __future__ import annotations

import json
from typing import Any

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from schemas.codec import TransientSchemaError
from schemas.registry import strip_logical_types
from streams.ops.config import SchemaRegistrySettings


class RegistrySchemas:
    """A SchemaResolver backed by a registry. An unknown id (HTTP 404) is the message's fault
    and becomes a dead letter; anything else (unreachable, 5xx, timeouts) is transient."""

    def __init__(self, settings: SchemaRegistrySettings) -> None:
        conf: dict[str, Any] = {"url": settings.url}
        if settings.basic_auth_user_info is not None:
            conf["basic.auth.user.info"] = settings.basic_auth_user_info.get_secret_value()
        # https to the registry; getattr: tests hand in stand-ins with only the two above.
        for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
            value = getattr(settings, name, None)
            if value:
                conf[name.replace("_", ".")] = value
        self._client = SchemaRegistryClient(conf)
        self._cache: dict[int, Any] = {}

    def writer_schema(self, schema_id: int) -> Any | None:
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as e:
            if e.http_status_code == 404:
                return None
            raise TransientSchemaError(f"registry error {e.http_status_code}: {e}") from e
        except Exception as e:  # connection refused, DNS, timeouts: all worth a retry
            raise TransientSchemaError(f"{type(e).__name__}: {e}") from e
        if schema.schema_type not in (None, "AVRO"):
            return None
        # Same integer-millisecond view of timestamps as the bundled schemas.
        writer = fastavro.parse_schema(strip_logical_types(json.loads(schema.schema_str)))
        self._cache[schema_id] = writer
        return writer
