"""What the runtime does when a decoder breaks its contract (an exception that is not a
rejection): the issue asks for a dead letter with a reason, never a crash and never a record
that is neither archived nor dead-lettered.

Today `Processor.decode` lets such an exception through; the worker's loop
(`streams/runtime/loop.py`, `_failed`) logs and counts it (`processing_errors`) and moves on,
so the worker survives but the record is in neither output (and the per-partition ledger's
"read = archived + dead-lettered + duplicates" no longer adds up). Kept as a strict xfail
until the processor turns it into a dead letter: it then passes and the marker goes.
"""

from __future__ import annotations

import pytest

from schemas import codec
from schemas.codec import BundledSchemas, decode_wire
from streams.ops.config import Config
from streams.processor import MemoryStore, Origin, Processor


@pytest.mark.xfail(
    strict=True,
    raises=RuntimeError,
    reason="Processor.decode does not turn a decoder's escape into a dead letter yet",
)
def test_a_decoder_escape_becomes_a_dead_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    def poisoned(*args: object, **kwargs: object) -> codec.Decoded:
        raise RuntimeError("decoder bug")

    monkeypatch.setattr("streams.processor.decode_event", poisoned)
    processor = Processor(Config(), BundledSchemas(), clock=lambda: 1_800_000_000_000)
    (out,) = processor.handle(b'{"machine_id": "m"}', None, Origin("t", 0, 1), MemoryStore())
    assert out.kind == "deadletter"
    assert decode_wire(out.value, "dead_letter")["value"] == b'{"machine_id": "m"}'
