"""`auditwatch config check FILE`: validate a config and print the effective values.

The effective values are every setting with its default filled in, as YAML, with secrets
masked (`Config.masked`), so the output can be diffed against the running config or pasted
into an issue. An invalid config exits 2 with the message naming each bad key and value, as
every other command does on a bad config.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from streams.ops.config import load_config


def check(path: str) -> tuple[str, str]:
    """(effective config as YAML with secrets masked, detection config_version). Raises
    ConfigError naming the bad keys and values."""
    cfg = load_config(path)
    text = yaml.safe_dump(cfg.masked(), sort_keys=False, default_flow_style=False)
    return text, cfg.detectors.build().version()


def cmd_config(args: argparse.Namespace) -> int:
    text, version = check(args.file)
    sys.stdout.write(f"# effective config of {args.file} (secrets masked)\n")
    sys.stdout.write(f"# config_version: {version}\n")
    sys.stdout.write(text)
    print(f"{args.file}: valid (config_version {version})", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    """Register `auditwatch config check`."""
    p = sub.add_parser(
        "config",
        help="validate a config file and show its effective values",
        description="Validate a YAML config as `auditwatch run` would at start and print "
        "every effective value (defaults filled in, secrets masked) as YAML, with the "
        "detection config_version that its alerts will carry. Exit 0 when valid; exit 2 "
        "with every bad key and value named when not.",
    )
    p.add_argument("action", choices=["check"])
    p.add_argument("file", metavar="FILE", help="the YAML config to check")
    p.set_defaults(func=cmd_config)
