"""atheris harness: `python -m tests.fuzz.harness TARGET|all [libFuzzer flags] [CORPUS_DIR...]`.

`all` fuzzes every target from one process (byte 0 of an input picks the target, see
`targets.any_target`). Without a corpus directory the run starts from the committed seeds and
regressions (copied to a scratch directory, so libFuzzer's new inputs stay out of the
repository). A crash is an input on which the target raised: libFuzzer writes it as
crash-<sha1> in the working directory (for `all`, byte 0 names the target); keep it under
tests/fuzz/regressions/TARGET/ with a name that says what it was, then fix the decoder.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["schemas", "streams"]):
    from tests.fuzz.targets import NAMES, TARGETS, any_target

from tests.fuzz.mutate import CORPUS, REGRESSIONS


def _seed(scratch: Path, names: list[str], prefixed: bool) -> None:
    for name in names:
        for folder in (CORPUS / name, REGRESSIONS / name):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                data = p.read_bytes()
                if prefixed:
                    data = bytes([NAMES.index(name)]) + data
                (scratch / f"{name}-{p.name}").write_bytes(data)


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name != "all" and name not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.harness {{all,{','.join(TARGETS)}}} [flags] [dirs]")
    args = [sys.argv[0], *sys.argv[2:]]
    if all(a.startswith("-") for a in args[1:]):
        scratch = Path(tempfile.mkdtemp(prefix=f"auditwatch-fuzz-{name}-"))
        _seed(scratch, list(NAMES) if name == "all" else [name], name == "all")
        args.append(str(scratch))
    logging.disable(logging.WARNING)
    atheris.Setup(args, any_target if name == "all" else TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
