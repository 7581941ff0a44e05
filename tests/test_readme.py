"""The README, run: its examples must print what it says they print.

Convention (README.md, Development): a ```console block is a transcript. A line starting with
`$ ` is a command (a trailing backslash continues it on the next line); the lines after it are
what it prints, trimmed: each shown line must appear in the output, in order, and others may
come between. A shown line ending in `...` is a prefix of the real one, and a line of only
`...` marks the cut. Durations (`83.8 s`) vary with the machine and are not compared. A
`cat FILE` command with its output is how a transcript gives a file's content: the test
writes the file instead of running the command. Paths under /tmp/ are moved into the test's
own directory, and every command runs with bash from the repository root.

Only ```console blocks are checked; ```sh blocks (commands without their output) are not.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
DURATION = re.compile(r"\b\d+(?:\.\d+)? s\b")
SCRATCH = re.compile(r"/tmp/(?=[\w.-])")
ELISION = "..."


@dataclass
class Command:
    text: str
    shown: list[str] = field(default_factory=list)


@dataclass
class Transcript:
    section: str
    line: int
    commands: list[Command] = field(default_factory=list)


def transcripts(text: str) -> list[Transcript]:
    """Every ```console block of `text`, with the `## ` section it is in."""
    found: list[Transcript] = []
    section = ""
    fence: str | None = None
    current: Transcript | None = None
    continued = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                fence = stripped[3:].strip()
                if fence == "console":
                    current = Transcript(section, number)
                    found.append(current)
            elif line.startswith("## "):
                section = line[3:].strip()
            continue
        if stripped == "```":
            fence, current, continued = None, None, False
            continue
        if current is None:
            continue
        if continued:
            current.commands[-1].text += "\n" + line
        elif line.startswith("$ "):
            current.commands.append(Command(line[2:]))
        elif current.commands:
            current.commands[-1].shown.append(line)
        continued = line.endswith("\\") and (line.startswith("$ ") or continued)
    return found


def _normal(line: str) -> str:
    return DURATION.sub("N s", line.rstrip())


def first_missing(shown: list[str], printed: str) -> str | None:
    """The first shown line not found, in order, among the printed ones; None if all are."""
    lines = iter([_normal(p) for p in printed.splitlines()])
    for s in shown:
        want = _normal(s)
        if not want.strip() or want.strip() == ELISION:
            continue
        prefix = want.endswith(ELISION)
        want = want.removesuffix(ELISION) if prefix else want
        if not any((p.startswith(want) if prefix else p == want) for p in lines):
            return s
    return None


def _venv_bin() -> Path:
    bin_dir = ROOT / ".venv" / "bin"
    if not (bin_dir / "auditwatch").exists():
        pytest.skip("the README's commands run .venv/bin/auditwatch (make install)")
    return bin_dir


def play(command: Command, scratch: Path, timeout: float) -> None:
    """Run one transcript command (or write the file a `cat` shows) and compare its output."""
    text = SCRATCH.sub(f"{scratch}/", command.text)
    shown = [SCRATCH.sub(f"{scratch}/", s) for s in command.shown]
    words = text.split()
    if len(words) == 2 and words[0] == "cat" and shown:
        path = Path(words[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(shown) + "\n")
        return
    done = subprocess.run(
        ["bash", "-c", "set -o pipefail\n" + text],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    printed = done.stdout
    assert done.returncode == 0, f"`{text}` exited {done.returncode}:\n{printed[-4000:]}"
    missing = first_missing(shown, printed)
    assert missing is None, (
        f"the README shows {missing!r} for `{text}`, which printed:\n{printed[-6000:]}"
    )


def _sections() -> dict[str, list[Transcript]]:
    by_section: dict[str, list[Transcript]] = {}
    for t in transcripts(README.read_text()):
        by_section.setdefault(t.section, []).append(t)
    return by_section


# -- the convention itself --------------------------------------------------------------------


def test_transcripts_are_parsed_with_their_commands_and_output() -> None:
    text = "\n".join(
        [
            "## Somewhere",
            "```sh",
            "$ not-a-transcript",
            "```",
            "```console",
            "$ cat /tmp/x/a.yaml",
            "a: 1",
            "$ tool --long \\",
            "    --more",
            "first line",
            "...",
            "```",
        ]
    )
    (t,) = transcripts(text)
    assert t.section == "Somewhere"
    assert [c.text for c in t.commands] == ["cat /tmp/x/a.yaml", "tool --long \\\n    --more"]
    assert t.commands[0].shown == ["a: 1"]
    assert t.commands[1].shown == ["first line", "..."]


def test_shown_output_must_appear_in_order() -> None:
    printed = "new: a (config_version x, 83.8 s)\nin both 20, only new 0\nsummary, long tail\n"
    assert (
        first_missing(["new: a (config_version x, 1.0 s)", "...", "summary, ..."], printed) is None
    )
    assert first_missing(["in both 20, only new 0", "new: a ..."], printed) == "new: a ..."
    assert first_missing(["in both 21, only new 0"], printed) == "in both 21, only new 0"


# -- the README's transcripts -------------------------------------------------------------------


def test_readme_has_transcripts() -> None:
    assert "Tuning loop" in _sections()


def test_config_check_examples_reproduce(tmp_path: Path) -> None:
    """The quick part of every transcript: the files it shows and its `config check` runs."""
    _venv_bin()
    checked = 0
    for transcript in transcripts(README.read_text()):
        for command in transcript.commands:
            if command.text.startswith("cat ") or " config check " in f" {command.text} ":
                play(command, tmp_path, timeout=60)
                checked += " config check " in f" {command.text} "
    assert checked


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("section", sorted(_sections()))
def test_readme_section_reproduces(section: str, tmp_path: Path) -> None:
    """Every command of the section's transcripts, in order, prints what the README shows."""
    _venv_bin()
    for transcript in _sections()[section]:
        for command in transcript.commands:
            play(command, tmp_path, timeout=600)


# -- Quick start: `make demo` ----------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_demo_pages_every_injected_anomaly_and_warns_of_nothing(
    bootstrap: str, tmp_path: Path
) -> None:
    """What `make demo` runs, against the broker $AUDITWATCH_BOOTSTRAP names: it uses that
    broker (starts and stops none, even with no local broker of its own), pages each machine it
    injects an anomaly on and nothing else (issue 16), and logs no warning."""
    env = {
        **os.environ,
        "AUDITWATCH_BOOTSTRAP": bootstrap,
        # An empty run directory: a demo that ignored the bootstrap would start a broker here.
        "AUDITWATCH_RUN_DIR": str(tmp_path / "run"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    log = done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "kafka-local" not in log, log[-4000:]
    injected = re.findall(r"^injecting \S+ on (\S+):", log, re.MULTILINE)
    assert len(injected) >= 3, log[-4000:]
    # A page line names its machine as `MACHINE: summary`, marked injected or not.
    unpaged = [m for m in injected if f" {m}: " not in done.stdout]
    assert not unpaged, done.stdout
    page_lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert all(line.startswith(("[injected ", "[NOT injected]")) for line in page_lines)
    assert not [line for line in page_lines if line.startswith("[NOT injected]")], done.stdout
    for m in injected:
        assert any(line.startswith("[injected ") and f" {m}: " in line for line in page_lines)
    assert re.search(
        r"^demo done: \d+ pages, \d+ on injected anomalies, 0 on none; .*every one paged",
        log,
        re.MULTILINE,
    ), log[-4000:]
    # A fresh deployment: what needs a daily cycle is still learning, and the demo says so.
    assert re.search(r"^learning: new_identity until \d{4}-", log, re.MULTILINE), log[-4000:]
    # GETPID ("coordinator load in progress") is librdkafka's retry while the broker loads its
    # transaction state; it is handled apart from this test.
    noisy = [
        line
        for line in log.splitlines()
        if re.search(r"warn", line, re.IGNORECASE) and "GETPID" not in line
    ]
    assert not noisy, "\n".join(noisy)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_synthetic_example_pages_its_injected_anomalies_and_nothing_else(
    tmp_path: Path,
) -> None:
    """The README's `produce --synthetic --hours 6 --machines 200 --anomalies
    fan_out=2,rate_burst=1`, written to a file and backtested (what the worker would page,
    without a broker), from a fixed start: every injected anomaly pages and nothing else does
    (issue 16: ci-runner-09's build paged as access_rate here before its group's peaks), with
    the default config."""
    events = tmp_path / "six.jsonl"
    run = [sys.executable, "-m", "streams.cli"]
    subprocess.run(
        [
            *run,
            "produce",
            "--synthetic",
            "--hours",
            "6",
            "--machines",
            "200",
            "--anomalies",
            "fan_out=2,rate_burst=1",
            "--start",
            "2026-12-07T13:10:00Z",
            "--seed",
            "7",
            "--out",
            str(events),
        ],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=300,
    )
    report = tmp_path / "bt.json"
    labels = tmp_path / "six.labels.jsonl"
    backtest = ["backtest", str(events), "--labels", str(labels), "-q"]
    subprocess.run(
        [*run, *backtest, "--json", str(report)],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=600,
    )
    new = orjson.loads(report.read_bytes())["runs"]["new"]
    false = [
        (p["machine_id"], p["detector"], p["event_time"])
        for p, v in zip(new["page_list"], new["page_verdicts"], strict=True)
        if not v["true"]
    ]
    assert not false
    assert new["score"]["recall"] == 1.0, new["score"]


# -- a first install is quiet ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_first_install_warns_of_nothing(tmp_path: Path) -> None:
    """`make`'s install (editable, quiet) and a plain `pip install .` of a fresh copy of the
    tracked files into a new venv: setuptools may complain about the layout on either."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    source = tmp_path / "source"
    for name in listed.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps"]
    # As the Makefile does: the pip bundled with Python hides what the build backend warns.
    subprocess.run([*pip, "--upgrade", "pip"], capture_output=True, timeout=300, check=True)
    for target in (["-e", str(source)], [str(source)]):
        done = subprocess.run(
            [*pip, *target],
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        said = done.stdout + done.stderr
        assert done.returncode == 0, said[-4000:]
        assert "warning" not in said.lower(), said[-4000:]


# -- `auditwatch --help` starts light ------------------------------------------------------

# Each costs tenths of a second of CPU to import (river brings scipy); `--help` needs none.
HEAVY = ("confluent_kafka", "fastavro", "river", "numpy", "scipy", "rich", "pydantic", "avro")


def test_help_imports_none_of_the_heavy_libraries() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "streams.cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "auditwatch demo" in done.stdout
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert imported, "python -X importtime printed nothing"
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_deferred_commands_are_listed_as_their_modules_describe_them() -> None:
    """`--help` lists a deferred command with main's copy of its line; the module's own line
    is the one its parser shows once chosen, and the two must agree."""
    import importlib

    from streams.cli.main import DEFERRED_COMMANDS, build_parser

    listed = build_parser().format_help()
    for name, (module, line) in DEFERRED_COMMANDS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).add_parser(sub)
        own = {action.dest: action.help for action in sub._choices_actions}
        assert own.get(name) == line, f"{module} describes {name!r} as {own.get(name)!r}"
        assert name in listed


def test_a_deferred_command_parses_its_own_arguments() -> None:
    from streams.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["config", "check", "x.yaml"])
    assert args.command == "config" and args.file == "x.yaml" and callable(args.func)
    args = parser.parse_args(["alerts", "ack", "a-1", "--by", "alice"])
    assert (args.alerts_action, args.alert_id, args.by) == ("ack", "a-1", "alice")


def test_produce_help_states_the_real_delivery_timeout() -> None:
    """The produce parser states the default without importing the producer (and with it
    confluent_kafka and the config model): the two must agree."""
    from streams.cli.main import build_parser
    from streams.tools.producer import DEFAULT_DELIVERY_TIMEOUT_S

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    produce_help = " ".join(sub.choices["produce"].format_help().split())
    assert f"default {DEFAULT_DELIVERY_TIMEOUT_S:g}, or the config's" in produce_help
