"""Issue 18's loose ends on the secure broker (StandardAuthorizer): an ACL refusal is told as
one, at once, naming the topic or group, the operation and the principal, and pointing to
`auditwatch acls show`; a worker refused its consumer group waits loudly (ERROR every minute,
/readyz not ready with the reason) and joins once the ACL is granted."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import httpx
import pytest

from streams.ops.topics import TopicAuthorizationError
from streams.runtime import loop
from streams.runtime.run import run
from streams.tools.reading import read_topic
from tests.conftest import wait_until
from tests.test_acls_kafka import Deployment, deployment  # noqa: F401 - the fixture

pytestmark = pytest.mark.kafka


def _without(d: Deployment, name: str, operation: str) -> tuple[list[Any], Any]:
    """The deployment's ACL set less the worker's `operation` on `name`, and that ACL."""
    (needed,) = [
        a
        for a in d.acls
        if a.role == "worker" and a.resource_name == name and a.operation == operation
    ]
    return [a for a in d.acls if a != needed], needed


@pytest.mark.timeout(120)
def test_a_worker_refused_its_group_waits_loudly_and_joins_once_granted(
    deployment: Any,  # noqa: F811 - the imported fixture
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d: Deployment = deployment()
    group = d.cfg.kafka.consumer_group
    kept, needed = _without(d, group, "Read")
    d.create(kept)
    # The minute between reminders, shortened: the test shows the reminder, not the minute.
    monkeypatch.setattr(loop, "_GROUP_REFUSED_EVERY_S", 1.0)
    caplog.set_level(logging.INFO)
    stop = threading.Event()
    worker = threading.Thread(target=run, args=(d.config("worker"), stop), daemon=True)
    worker.start()
    try:

        def refusals() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.levelno == logging.ERROR and "consumer group" in r.getMessage()
            ]

        said = wait_until(
            lambda: len(refusals()) >= 2 and refusals(), timeout=60, what="the refusal, twice"
        )
        assert f"not authorized to join consumer group {group}" in said[0]
        assert f"{d.principals['worker']} needs Read on group {group}" in said[0]
        assert "auditwatch acls show --role worker" in said[0]
        (served,) = [r.getMessage() for r in caplog.records if "serving /metrics" in r.getMessage()]
        match = re.search(r"http://[\d.]+:\d+", served)
        assert match is not None
        ready = httpx.get(match.group(0) + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["waiting"].startswith(f"not authorized to join consumer group {group}")
        assert worker.is_alive()

        d.grant([needed])

        def joined() -> bool:
            return "waiting" not in httpx.get(match.group(0) + "/readyz").json()

        wait_until(joined, timeout=60, what="the worker to join once granted")
        assert any("its ACL is in place now" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        worker.join(30)


@pytest.mark.timeout(120)
def test_run_refused_a_topic_names_it_the_operation_and_the_principal(
    deployment: Any,  # noqa: F811 - the imported fixture
) -> None:
    d: Deployment = deployment()
    archive = d.cfg.topics.archive
    kept, _ = _without(d, archive, "Write")
    d.create(kept)
    worker = d.start_worker()
    assert worker.wait(60) == 1
    text = d.worker_log()
    (stopped,) = [line for line in text.splitlines() if "run stopped" in line]
    assert f"{d.principals['worker']} may not Create topic(s) {archive}" in stopped, text
    assert "TOPIC_AUTHORIZATION_FAILED, an ACL problem" in stopped
    assert "`auditwatch acls show --role worker`" in stopped


@pytest.mark.timeout(120)
def test_a_reader_refused_a_topic_is_told_so_at_once_not_that_it_is_missing(
    deployment: Any,  # noqa: F811 - the imported fixture
) -> None:
    d: Deployment = deployment()
    d.create()
    cfg = d.config("producer")
    began = time.monotonic()
    with pytest.raises(TopicAuthorizationError) as refused:
        list(read_topic(cfg, cfg.topics.alerts, timeout=30))
    assert time.monotonic() - began < 10
    text = str(refused.value)
    assert f"{d.principals['producer']} may not Read topic(s) {cfg.topics.alerts}" in text
    assert "does not exist" not in text
    # A topic that is missing is still told as missing.
    with pytest.raises(RuntimeError, match="does not exist"):
        list(read_topic(d.cfg, d.cfg.topics.alerts + "-missing", timeout=2))
