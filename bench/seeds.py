"""The seeds of the scenario suite (`bench.scenarios`), fixed before any tuning.

Whoever tunes a detector default runs `python -m bench.evaluate --tuning` (the tuning seeds)
and looks at nothing else; `make eval` reports on the reporting seeds. The reporting seeds are
never tuned on: a figure measured on the seeds a default was chosen on says how well it was
fitted, not how well it works.
"""

from __future__ import annotations

TUNING_SEEDS: tuple[int, ...] = (1, 2, 3, 4, 5)
# Never tune on these: they are what `make eval` reports.
REPORTING_SEEDS: tuple[int, ...] = (101, 102, 103, 104, 105)
