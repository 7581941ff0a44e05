"""`auditwatch run` with the detection core taken out: the most any detector speed-up can give.

`python -m bench.floor run --config FILE` is `auditwatch run` (the same arguments) except that
the detection core is never called: `Processor.detect` (each new event) and
`Processor.punctuate` (the silence sweep, driven by the partitions' event-time clocks) return
no alerts at once. Everything else stays, in the runtime's one pass per event
(`streams.runtime.task.Task.process`): the consume loop, decode and validation, the routing
check, the dedupe state (`Processor.admit`: the event id's digest read and written in the
partition's state), the archive record and its produce, the changelog records of the changed
state and the commits (`streams.runtime.loop.Worker.commit`), metrics. Its rate against the
ceiling's in the same run bounds what the pipeline can reach on this runtime and topology
however fast detection becomes.
"""

from __future__ import annotations

import sys
from typing import Any

from streams import processor
from streams.cli.main import main


def _no_alerts(self: Any, *_args: Any, **_kwargs: Any) -> list[Any]:
    return []


def switch_off_detection() -> None:
    """Patch the processor class, before `auditwatch run` builds its Processor."""
    processor.Processor.detect = _no_alerts  # type: ignore[method-assign]
    processor.Processor.punctuate = _no_alerts  # type: ignore[method-assign]


if __name__ == "__main__":
    switch_off_detection()
    sys.exit(main())
