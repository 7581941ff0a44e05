"""`auditwatch schema check NEW.avsc`: can a changed schema and the bundled one read each
other's data?

Run before registering a new event schema for producers (their records must stay readable by
the pipeline's bundled reader: forward) or before changing a bundled schema (records already
on the topics must stay readable by the new one: backward). The rules and their wording are
`schemas.compat`'s. Needs no broker.

Exit status: 0 compatible in every direction asked, 1 not (each problem named: where, what,
why), 2 a usage error (a file that is missing, not JSON or not an Avro schema; an unknown
--against).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from streams.cli.errors import UsageError

HELP = "check a new Avro schema against the bundled one (reader/writer compatibility)"
# The bundled schemas a new one may be checked against, by file name.
_BUNDLED = ("audit_event", "archive_record", "dead_letter", "alert")


def add_parser(sub: Any) -> None:
    """Register `auditwatch schema check`."""
    p = sub.add_parser(
        "schema",
        help=HELP,
        description="Avro schema evolution. `check` says whether data written with one "
        "schema can be read with the other (Avro's schema resolution rules: a field the "
        "writer lacks needs a default in the reader, a writer's enum symbol must be the "
        "reader's, numbers may only widen...).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = actions.add_parser(
        "check",
        help="is NEW.avsc compatible with the bundled schema (or another file)?",
        description="Compare NEW.avsc with a bundled schema, both ways by default: backward "
        "(NEW, as reader, reads records the bundled schema wrote: what is already on the "
        "topics) and forward (the bundled schema, as reader, reads records NEW writes: what "
        "a producer using NEW sends to this pipeline). Exit 0 when compatible in every "
        "direction asked, 1 with each problem named (where, what, why), 2 for a file that "
        "is not an Avro schema.",
    )
    c.add_argument("new", metavar="NEW.avsc", help="the changed schema")
    c.add_argument(
        "--against",
        metavar="NAME|FILE",
        help=f"a bundled schema ({', '.join(_BUNDLED)}) or another .avsc file "
        "(default: the bundled schema of NEW's record name)",
    )
    c.add_argument(
        "--direction",
        choices=("backward", "forward", "full"),
        default="full",
        help="backward: NEW reads the old; forward: the old reads NEW; full: both (default)",
    )
    c.set_defaults(func=cmd_check)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None


def cmd_check(args: argparse.Namespace) -> int:
    from schemas import compat

    try:
        new = compat.parse_file(_read(args.new))
    except compat.SchemaParseError as e:
        raise UsageError(f"{args.new}: {e}") from None
    against = args.against
    if against is None:
        by_record = {getattr(compat.bundled(n), "fullname", n): n for n in _BUNDLED}
        full_name = getattr(new, "fullname", None)
        if full_name not in by_record:
            raise UsageError(
                f"{args.new}: its {full_name or new.type} is none of the bundled records "
                f"({', '.join(by_record)}); say which with --against"
            )
        against = by_record[full_name]
    if against in _BUNDLED:
        old, label = compat.bundled(against), f"the bundled {against}"
    elif Path(against).suffix == ".avsc" or Path(against).exists():
        try:
            old, label = compat.parse_file(_read(against)), against
        except compat.SchemaParseError as e:
            raise UsageError(f"{against}: {e}") from None
    else:
        raise UsageError(
            f"--against {against!r} is neither a bundled schema ({', '.join(_BUNDLED)}) nor a file"
        )
    results = compat.check(new, old, args.direction)
    meaning = {
        "backward": f"{args.new} reads what {label} wrote",
        "forward": f"{label} reads what {args.new} writes",
    }
    ok = True
    for direction, problems in results.items():
        verdict = "compatible" if not problems else f"INCOMPATIBLE ({len(problems)})"
        print(f"{direction} ({meaning[direction]}): {verdict}")
        for p in problems:
            print(f"  {p}")
        ok = ok and not problems
    if not ok:
        print(f"{args.new} is not {args.direction}-compatible with {label}", file=sys.stderr)
    return 0 if ok else 1
