"""`auditwatch run` with the detection core taken out: the most any detector speed-up can give.

`python -m bench.floor run --config FILE` is `auditwatch run` (the same arguments) except that
the detection stage's call into the detection core returns no alerts at once. Everything else
stays: decode, validation, dedupe state, the archive record, the re-keyed detection topic and
its consumption, the detection stage's state transaction, commits and metrics. Its rate
against the ceiling's in the same run bounds what the pipeline can reach on this engine and
topology however fast detection becomes.
"""

from __future__ import annotations

import sys
from typing import Any

from streams import processor
from streams.cli import main


def _no_detection(self: Any, *_args: Any, **_kwargs: Any) -> list[Any]:
    return []


if __name__ == "__main__":
    processor.Processor.detect = _no_detection  # type: ignore[method-assign]
    sys.exit(main())
