"""Producer authenticity: events signed with a per-machine key, and their verification.

A machine that signs sends two more fields with each event: `key_id` (which of its keys signed)
and `signature`. auditwatch checks the events of the machines that have a key configured
(`signing.keys` in the config), and only those: which machines sign is configured, never
learned from traffic. Standard library, and `cryptography` imported for Ed25519 keys only;
nothing Kafka.

Canonical encoding, version 1 (what is signed)
-----------------------------------------------
The signature covers the bytes below, built from the event's fields *as validated* (the same
values whichever wire format, Avro or JSON, carried them). Every integer is big-endian; `text`
is a string as a 4-byte unsigned length followed by its UTF-8 bytes (no normalisation, no
terminator); `opt` is one byte 0x00 for a null or absent field, or 0x01 followed by `text`.

    b"auditwatch-event-v1" 0x00          the 20-byte domain tag
    text(key_id)                         included: a signature names the key it was made with
    opt(event_id)                        null when the producer sent none (or "")
    timestamp                            8 bytes, signed: the event time in epoch MICROseconds
    text(machine_id) text(resource) text(operation)
    text(outcome)                        upper case: SUCCESS, FAILURE or DENIED
    opt(source_ip) opt(identity_type) opt(source)
    count                                4 bytes, unsigned: the number of attributes
    text(key) text(value)                per attribute, sorted by the key's UTF-8 bytes

`signature` itself is not covered. An absent `attributes` is the empty map. The timestamp is
epoch milliseconds x 1000 for an Avro event and for a JSON epoch-millis integer; an RFC 3339
timestamp counts to the microsecond (digits past the sixth are dropped), so a producer signing
RFC 3339 time should sign what it sends, at most to the microsecond. An empty string is a
present value (0x01 then a zero length) except for `event_id`, where "" means "none".

The signature is the raw signature in base64 (RFC 4648 standard alphabet, with padding):
HMAC-SHA256 with the machine's shared secret (32 bytes, 44 characters) or Ed25519 with the
machine's private key (64 bytes, 88 characters). The algorithm is that of the configured key
the key id names, never something the event says. A key id configured for another machine
does not verify this one's events.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from schemas.event import Limits, event_from_mapping

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

DOMAIN = b"auditwatch-event-v1\x00"
ALGORITHMS = ("hmac-sha256", "ed25519")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")


class Signable(Protocol):
    """What signing reads of an event (`schemas.event.AuditEvent` is one)."""

    @property
    def event_id(self) -> str: ...
    @property
    def event_id_derived(self) -> bool: ...
    @property
    def ts_us(self) -> int: ...
    @property
    def machine_id(self) -> str: ...
    @property
    def resource(self) -> str: ...
    @property
    def operation(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def source_ip(self) -> str | None: ...
    @property
    def identity_type(self) -> str | None: ...
    @property
    def source(self) -> str | None: ...
    @property
    def attributes(self) -> Mapping[str, str]: ...
    @property
    def key_id(self) -> str | None: ...
    @property
    def signature(self) -> str | None: ...


def _text(parts: list[bytes], s: str) -> None:
    b = s.encode()
    parts.append(_U32.pack(len(b)))
    parts.append(b)


def _opt(parts: list[bytes], s: str | None) -> None:
    if s is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01")
        _text(parts, s)


def canonical_bytes(event: Signable, key_id: str) -> bytes:
    """The bytes a signature covers (see the module docstring), for the key `key_id`."""
    parts = [DOMAIN]
    _text(parts, key_id)
    _opt(parts, None if event.event_id_derived or not event.event_id else event.event_id)
    parts.append(_I64.pack(event.ts_us))
    _text(parts, event.machine_id)
    _text(parts, event.resource)
    _text(parts, event.operation)
    # Validation takes any case; what is signed is the one the archive keeps.
    _text(parts, event.outcome.upper())
    _opt(parts, event.source_ip)
    _opt(parts, event.identity_type)
    _opt(parts, event.source)
    attrs = sorted((k.encode(), v.encode()) for k, v in event.attributes.items())
    parts.append(_U32.pack(len(attrs)))
    for k, v in attrs:
        parts.append(_U32.pack(len(k)))
        parts.append(k)
        parts.append(_U32.pack(len(v)))
        parts.append(v)
    return b"".join(parts)


class Verdict(StrEnum):
    """What verification found. Anything but VERIFIED archives the event as unverified."""

    VERIFIED = "verified"
    MISSING = "missing"  # no signature, or no key id
    UNKNOWN_KEY_ID = "unknown_key_id"  # a key id that is not one of the machine's keys
    BAD_SIGNATURE = "bad_signature"  # not base64, the wrong length, or does not verify

    @property
    def ok(self) -> bool:
        return self is Verdict.VERIFIED


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a machine: an HMAC secret, or an Ed25519 public (to verify) or private (to
    sign) key. `secret` is never printed."""

    key_id: str
    algorithm: str
    secret: bytes | None = None
    public: Ed25519PublicKey | None = None
    private: Ed25519PrivateKey | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown signing algorithm {self.algorithm!r}")
        if self.algorithm == "hmac-sha256" and not self.secret:
            raise ValueError(f"key {self.key_id!r}: an hmac-sha256 key needs a non-empty secret")
        if self.algorithm == "ed25519" and self.public is None and self.private is None:
            raise ValueError(f"key {self.key_id!r}: an ed25519 key needs a public or private key")

    def __repr__(self) -> str:
        return f"Key(key_id={self.key_id!r}, algorithm={self.algorithm!r})"

    def sign_bytes(self, message: bytes) -> bytes:
        if self.algorithm == "hmac-sha256":
            assert self.secret is not None
            return hmac.new(self.secret, message, hashlib.sha256).digest()
        if self.private is None:
            raise ValueError(f"key {self.key_id!r} is a public key: it verifies, it cannot sign")
        return self.private.sign(message)

    def verify_bytes(self, message: bytes, signature: bytes) -> bool:
        if self.algorithm == "hmac-sha256":
            assert self.secret is not None
            expected = hmac.new(self.secret, message, hashlib.sha256).digest()
            return hmac.compare_digest(expected, signature)
        from cryptography.exceptions import InvalidSignature

        public = self.public if self.public is not None else self.private.public_key()  # type: ignore[union-attr]
        if len(signature) != 64:
            return False
        try:
            public.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def sign(event: Signable, key: Key) -> str:
    """The `signature` field for `event` signed with `key` (its key_id is the one signed)."""
    return base64.b64encode(key.sign_bytes(canonical_bytes(event, key.key_id))).decode("ascii")


# The limits are the processor's concern (its config may raise them): signing signs whatever
# is a well-formed event.
_NO_LIMITS = Limits(1 << 62, 1 << 62, 1 << 62, 1 << 62)


def sign_record(record: dict[str, Any], key: Key) -> dict[str, Any]:
    """A producer's event (the Avro or JSON form, as `schemas.event.event_from_mapping` takes
    it) with `key_id` and `signature` set. Validates it first, since what is signed is the
    validated event."""
    unsigned = {**record, "key_id": key.key_id, "signature": None}
    ev = event_from_mapping(unsigned, _NO_LIMITS, 0)
    unsigned["signature"] = sign(ev, key)
    return unsigned


class Keyring:
    """The configured keys: machine id (or a glob such as `payments-api-*`) -> its keys. A
    machine with no entry is not checked. Lookups of glob patterns are cached per machine id,
    so the per-event cost is a dict lookup."""

    __slots__ = ("_cache", "_exact", "_globs")

    def __init__(self, keys: Mapping[str, Iterable[Key]]) -> None:
        self._exact: dict[str, dict[str, Key]] = {}
        self._globs: list[tuple[str, dict[str, Key]]] = []
        for machine, machine_keys in keys.items():
            by_id = {k.key_id: k for k in machine_keys}
            if any(c in machine for c in "*?["):
                self._globs.append((machine, by_id))
            else:
                self._exact[machine] = by_id
        self._cache: dict[str, dict[str, Key] | None] = {}

    def __len__(self) -> int:
        return len(self._exact) + len(self._globs)

    def keys_of(self, machine_id: str) -> dict[str, Key] | None:
        """The machine's keys by key id, or None when it does not sign."""
        found = self._exact.get(machine_id)
        if found is not None or not self._globs:
            return found
        if machine_id in self._cache:
            return self._cache[machine_id]
        for pattern, by_id in self._globs:
            if fnmatch.fnmatchcase(machine_id, pattern):
                found = by_id
                break
        if len(self._cache) >= 100_000:
            self._cache.clear()
        self._cache[machine_id] = found
        return found


def verify(event: Signable, keys: Keyring) -> Verdict | None:
    """The verdict on `event`'s signature, or None when its machine has no configured key
    (it is not checked)."""
    machine_keys = keys.keys_of(event.machine_id)
    if machine_keys is None:
        return None
    if event.signature is None or event.key_id is None:
        return Verdict.MISSING
    key = machine_keys.get(event.key_id)
    if key is None:
        return Verdict.UNKNOWN_KEY_ID
    try:
        raw = base64.b64decode(event.signature, validate=True)
    except (binascii.Error, ValueError):
        return Verdict.BAD_SIGNATURE
    if key.verify_bytes(canonical_bytes(event, event.key_id), raw):
        return Verdict.VERIFIED
    return Verdict.BAD_SIGNATURE


def secret_from_bytes(data: bytes) -> bytes:
    """An HMAC secret as read from a file: its bytes, less one trailing line break (editors
    add one; a secret that ends in a line break cannot be given in a file)."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def public_key_from_bytes(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key: PEM (SubjectPublicKeyInfo, as `openssl pkey -pubout` writes) or
    the raw 32 bytes in base64."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        key = load_pem_public_key(text)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM public key is not an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a PEM public key nor 32 bytes in base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def signing_key_from_bytes(data: bytes, key_id: str, algorithm: str | None = None) -> Key:
    """A producer's key from a file's bytes: a PEM private key is Ed25519 (PKCS#8, as
    `openssl genpkey -algorithm ed25519` writes), anything else an HMAC secret, unless
    `algorithm` says which."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    is_pem = data.lstrip().startswith(b"-----BEGIN")
    if algorithm is None:
        algorithm = "ed25519" if is_pem else "hmac-sha256"
    if algorithm == "hmac-sha256":
        return Key(key_id, algorithm, secret=secret_from_bytes(data))
    if algorithm != "ed25519":
        raise ValueError(
            f"unknown signing algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})"
        )
    if not is_pem:
        raise ValueError("an ed25519 signing key must be a PEM private key (PKCS#8)")
    private = load_pem_private_key(data.strip(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError("the PEM private key is not an Ed25519 key")
    return Key(key_id, algorithm, private=private)
