"""What the runtime does when a decoder breaks its contract (an exception that is not a
rejection): the issue asks for a dead letter with a reason, never a crash and never a record
that is neither archived nor dead-lettered. `Processor.decode` dead-letters it as
`decoder_error` (README's list), so the per-partition ledger still adds up (see
tests/test_loose_ends.py for the task and its ledger).
"""

from __future__ import annotations

import logging

import pytest

from schemas import codec
from schemas.codec import BundledSchemas, decode_wire
from streams.ops.config import Config
from streams.processor import MemoryStore, Origin, Processor
from tests.fuzz.targets import REASONS


def test_a_decoder_escape_becomes_a_dead_letter(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def poisoned(*args: object, **kwargs: object) -> codec.Decoded:
        raise RuntimeError("decoder bug")

    monkeypatch.setattr("streams.processor.decode_event", poisoned)
    processor = Processor(Config(), BundledSchemas(), clock=lambda: 1_800_000_000_000)
    caplog.set_level(logging.INFO, "auditwatch.processor")
    for offset in (1, 2):
        (out,) = processor.handle(
            b'{"machine_id": "m"}', b"m", Origin("t", 0, offset), MemoryStore()
        )
        assert out.kind == "deadletter"
        record = decode_wire(out.value, "dead_letter")
        assert record["value"] == b'{"machine_id": "m"}'
        assert (record["reason"], record["stage"], record["offset"]) == (
            "decoder_error",
            "decode",
            offset,
        )
        assert "RuntimeError: decoder bug" in record["message"]
    assert "decoder_error" in REASONS
    assert processor.metrics["deadlettered.decoder_error"] == 2
    # The traceback once, naming where the first one came from; the second at INFO.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is not None
    assert "t[0]@1" in warnings[0].getMessage()
    assert any(r.levelno == logging.INFO and "t[0]@2" in r.getMessage() for r in caplog.records)
