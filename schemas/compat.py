"""Avro reader/writer compatibility: can data written with one schema be read with another?

The rules are Avro's schema resolution (the specification's "Schema Resolution"): a reader
field the writer lacks needs a default, a writer's enum symbol must be one of the reader's
(unless the reader's enum has a default), numbers may be promoted (int to long, float, double;
long to float, double; float to double), string and bytes read each other, a writer's union
branches must each be readable and a reader's union must have a branch for the writer's type,
named types match by name (or a reader alias), fixed types by size too.

The `avro` package has a checker (`avro.compatibility.ReaderWriterCompatibilityChecker`), and
it gives the same verdicts (tests/test_schema_evolution.py compares them), but in avro 1.12 it
returns the problems' messages and locations as two unordered sets, so a problem cannot be
told with the field it concerns. This walks the `avro` package's parsed schemas and returns
each problem with its place, in the order of the schema.

Used by `auditwatch schema check` and by `schemas.codec` to say why an event written with a
registry's writer schema cannot be read. Imports the `avro` package; nothing Kafka.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import avro.errors
import avro.schema

from schemas.registry import expand_for_registry

DIRECTIONS = ("backward", "forward", "full")
# What a writer's primitive may be read as, besides itself.
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


@dataclass(frozen=True, slots=True)
class Incompatibility:
    """One reason data written with the writer schema cannot be read with the reader schema.
    `kind` is the name `avro.compatibility.SchemaIncompatibilityType` uses for it."""

    path: str  # where in the reader schema, e.g. AuditEvent.outcome or AuditEvent.attributes<>
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} ({self.kind})"


class SchemaParseError(ValueError):
    """Not a valid Avro schema; the message says why."""


def parse(text: str, names: avro.schema.Names | None = None) -> avro.schema.Schema:
    """Parse an Avro schema from its JSON text; `names` resolves references to types defined
    elsewhere (a schema referring to the bundled `dev.auditwatch.AuditEvent`, say)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SchemaParseError(f"not JSON: {e}") from None
    try:
        return avro.schema.make_avsc_object(data, copy.deepcopy(names) if names else None)
    except (avro.errors.AvroException, TypeError, KeyError, AttributeError, ValueError) as e:
        raise SchemaParseError(f"not a valid Avro schema: {e}") from None


def bundled(name: str) -> avro.schema.Schema:
    """One of the bundled schemas, self-contained (named references inlined)."""
    return parse(expand_for_registry(name))


def parse_file(text: str) -> avro.schema.Schema:
    """Parse a schema file. One that refers to the bundled event by name, as
    `archive_record.avsc` does, is parsed with the bundled `dev.auditwatch.AuditEvent`."""
    try:
        return parse(text)
    except SchemaParseError as first:
        names = avro.schema.Names()
        avro.schema.make_avsc_object(json.loads(expand_for_registry("audit_event")), names)
        try:
            return parse(text, names)
        except SchemaParseError:
            raise first from None


def from_fastavro(parsed: Any) -> avro.schema.Schema:
    """The `avro` package's view of a schema fastavro has parsed (its bookkeeping keys, which
    start with two underscores, left out)."""

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if not k.startswith("__")}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return parse(json.dumps(clean(parsed)))


def incompatibilities(
    reader: avro.schema.Schema, writer: avro.schema.Schema
) -> list[Incompatibility]:
    """Every reason data written with `writer` cannot be read with `reader` ([] when it can)."""
    out: list[Incompatibility] = []
    _check(reader, writer, _name(reader), out, set())
    return out


def _name(s: avro.schema.Schema) -> str:
    return str(getattr(s, "name", None) or s.type)


def _describe(s: avro.schema.Schema) -> str:
    if isinstance(s, avro.schema.NamedSchema):
        return f"{s.type} {s.fullname}"
    if isinstance(s, avro.schema.UnionSchema):
        return "union [" + ", ".join(_describe(b) for b in s.schemas) + "]"
    return str(s.type)


def _names_match(reader: avro.schema.NamedSchema, writer: avro.schema.NamedSchema) -> bool:
    if reader.name == writer.name or reader.fullname == writer.fullname:
        return True
    aliases = list(reader.props.get("aliases") or [])  # type: ignore[call-overload]
    return writer.name in aliases or writer.fullname in aliases


def _check(
    reader: avro.schema.Schema,
    writer: avro.schema.Schema,
    path: str,
    out: list[Incompatibility],
    seen: set[tuple[str, str]],
) -> None:
    def problem(kind: str, message: str) -> None:
        out.append(Incompatibility(path, kind, message))

    if isinstance(writer, avro.schema.UnionSchema):
        # Each branch may have been written, so each must be readable.
        for branch in writer.schemas:
            if isinstance(reader, avro.schema.UnionSchema):
                _check_into_union(reader, branch, path, out, seen)
            else:
                _check(reader, branch, path, out, seen)
        return
    if isinstance(reader, avro.schema.UnionSchema):
        _check_into_union(reader, writer, path, out, seen)
        return
    rt, wt = reader.type, writer.type
    if rt != wt:
        if wt in _PROMOTIONS and rt in _PROMOTIONS[wt]:
            return
        problem(
            "type_mismatch",
            f"the writer's {_describe(writer)} cannot be read as {_describe(reader)}",
        )
        return
    if isinstance(reader, avro.schema.NamedSchema):
        assert isinstance(writer, avro.schema.NamedSchema)
        if not _names_match(reader, writer):
            problem(
                "name_mismatch",
                f"the writer's {wt} is named {writer.fullname}, not {reader.fullname}",
            )
            return
    if isinstance(reader, avro.schema.FixedSchema):
        assert isinstance(writer, avro.schema.FixedSchema)
        if reader.size != writer.size:
            problem(
                "fixed_size_mismatch",
                f"the writer's fixed has {writer.size} bytes, the reader's {reader.size}",
            )
    elif isinstance(reader, avro.schema.EnumSchema):
        assert isinstance(writer, avro.schema.EnumSchema)
        missing = [s for s in writer.symbols if s not in reader.symbols]
        if missing and reader.props.get("default") is None:
            problem(
                "missing_enum_symbols",
                f"the writer's symbol{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"{'are' if len(missing) > 1 else 'is'} not among the reader's "
                f"({', '.join(reader.symbols)}) and the reader's enum has no default",
            )
    elif isinstance(reader, avro.schema.MapSchema):
        assert isinstance(writer, avro.schema.MapSchema)
        _check(reader.values, writer.values, f"{path}<>", out, seen)
    elif isinstance(reader, avro.schema.ArraySchema):
        assert isinstance(writer, avro.schema.ArraySchema)
        _check(reader.items, writer.items, f"{path}[]", out, seen)
    elif isinstance(reader, avro.schema.RecordSchema):
        assert isinstance(writer, avro.schema.RecordSchema)
        pair = (reader.fullname, writer.fullname)
        if pair in seen:  # a recursive type: already being checked further up
            return
        seen = seen | {pair}
        by_name = {f.name: f for f in writer.fields}
        for field in reader.fields:
            here = f"{path}.{field.name}"
            match = by_name.get(field.name)
            if match is None:
                for alias in field.props.get("aliases") or []:
                    match = by_name.get(alias)
                    if match is not None:
                        break
            if match is not None:
                _check(field.type, match.type, here, out, seen)
            elif not field.has_default:
                out.append(
                    Incompatibility(
                        here,
                        "reader_field_missing_default_value",
                        f"the writer has no field {field.name} "
                        "and the reader's field has no default",
                    )
                )


def _check_into_union(
    reader: avro.schema.UnionSchema,
    writer: avro.schema.Schema,
    path: str,
    out: list[Incompatibility],
    seen: set[tuple[str, str]],
) -> None:
    for branch in reader.schemas:
        trial: list[Incompatibility] = []
        _check(branch, writer, path, trial, seen)
        if not trial:
            return
    out.append(
        Incompatibility(
            path,
            "missing_union_branch",
            f"the writer's {_describe(writer)} is not readable as any branch of the reader's "
            f"{_describe(reader)}",
        )
    )


def check(
    new: avro.schema.Schema, old: avro.schema.Schema, direction: str
) -> dict[str, list[Incompatibility]]:
    """The problems per direction asked: backward (`new` reads what `old` wrote), forward
    (`old` reads what `new` writes), full (both)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    out: dict[str, list[Incompatibility]] = {}
    if direction in ("backward", "full"):
        out["backward"] = incompatibilities(new, old)
    if direction in ("forward", "full"):
        out["forward"] = incompatibilities(old, new)
    return out
