"""`auditwatch kafka ... --secure` reaches the secure local broker's controls."""

from __future__ import annotations

from typing import Any

import pytest

from streams.cli.main import main
from tests.conftest import SecureBroker


@pytest.mark.kafka
def test_kafka_status_secure_names_the_secure_broker(
    secure_broker: SecureBroker, capsys: Any
) -> None:
    from streams.ops import kafka_local

    if kafka_local.status(secure=True) is None:
        pytest.skip("the secure broker of this run is not the local one")
    assert main(["kafka", "status", "--secure"]) == 0
    assert capsys.readouterr().out.strip() == secure_broker.bootstrap


def test_kafka_fetch_takes_secure_without_complaint() -> None:
    # One set of jars serves both brokers: `--secure` on fetch must not be a usage error.
    from streams.cli.main import build_parser

    args = build_parser().parse_args(["kafka", "fetch", "--secure"])
    assert args.action == "fetch" and args.secure
