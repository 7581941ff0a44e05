"""`auditwatch run`: the Processor driven by the micro-batch runtime (streams.runtime).

This module sets the worker up (topics, the config reloader, telemetry, the control topic,
SIGHUP) and runs it until SIGTERM/SIGINT; the runtime does the Kafka side.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from confluent_kafka import KafkaException

from schemas.codec import BundledSchemas, SchemaResolver
from streams.ops.broker import wait_for_broker
from streams.ops.collector import tune_for_detection
from streams.ops.config import Config
from streams.ops.control import ControlReader
from streams.ops.metrics import InputWatch, Telemetry, start_http
from streams.ops.reload import ConfigReloader
from streams.ops.topics import TopicAuthorizationError, ensure_topics
from streams.processor import Processor
from streams.runtime.loop import Worker

log = logging.getLogger("auditwatch.run")


def make_resolver(cfg: Config) -> SchemaResolver:
    if cfg.input.schema_registry is None:
        return BundledSchemas()
    from streams.ops.registry import RegistrySchemas

    return RegistrySchemas(cfg.input.schema_registry)


def run(
    cfg: Config,
    stop: threading.Event | None = None,
    config_path: str | None = None,
    reload_poll_s: float = 0.0,
) -> Processor:
    """Run until SIGTERM/SIGINT (or `stop` is set). Creates missing topics first. With
    `config_path`, SIGHUP (and, with `reload_poll_s` > 0, a change to the file) reloads the
    detection settings, keeping the baselines."""
    # First thing: SIGHUP's default action kills the process, and startup (topics, state,
    # the control topic) can take a while. A reload asked for meanwhile waits for the reloader.
    hup = _HupRoute(wants_reload=config_path is not None)
    previous_hup = hup.install()
    try:
        return _run(cfg, stop, config_path, reload_poll_s, hup)
    finally:
        if previous_hup is not None:
            signal.signal(signal.SIGHUP, previous_hup)


def _run(
    cfg: Config,
    stop: threading.Event | None,
    config_path: str | None,
    reload_poll_s: float,
    hup: _HupRoute,
) -> Processor:
    stop = stop or threading.Event()
    # Before anything waits on the broker: SIGTERM during start-up stops it cleanly.
    previous = _stop_on_signals(stop)
    processor = Processor(cfg, make_resolver(cfg))
    telemetry = Telemetry(cfg, processor)
    # Served from the start, so /readyz says what start-up waits for.
    server = start_http(telemetry, cfg)
    reloader: ConfigReloader | None = None
    watch: InputWatch | None = None
    control: ControlReader | None = None
    try:
        if not _wait_for_kafka(cfg, stop, telemetry):
            log.info("stopped before the Kafka broker at %s answered", cfg.kafka.bootstrap())
            return processor
        reloader = ConfigReloader(config_path, cfg, reload_poll_s).start() if config_path else None
        if reloader is not None:
            hup.attach(reloader)
        worker = Worker(cfg, processor, telemetry, reloader)
        tune_for_detection()
        if cfg.monitoring.input_quiet_s:
            watch = InputWatch(cfg, telemetry, lambda: processor.core.config_version)
            watch.start()
        # Acknowledgements and snoozes from every partition of the control topic, whichever
        # partitions this worker owns; loaded before the first event is judged.
        control = ControlReader(cfg).start()
        if not control.wait_ready(30.0):
            log.warning("control topic not loaded within 30 s; acknowledgements apply once it is")
        processor.core.control = control.lookup
        telemetry.control = control
        worker.start()
        worker.run(stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if watch is not None:
            watch.stop()
        if server is not None:
            server.stop()
        if control is not None:
            control.stop()
        if reloader is not None:
            reloader.stop()
    return processor


# A broker that went away again between the probe and the topics: wait for it once more.
_LOST = ("_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_TIMED_OUT")


def _wait_for_kafka(cfg: Config, stop: threading.Event, telemetry: Telemetry) -> bool:
    """Wait for the broker, then create the topics that are missing; True once both are done,
    False if stopped first. A worker started before its broker (a restart of the whole
    deployment, a broker being replaced) waits and says so; it never exits on a broker that
    is down."""
    while True:
        if not wait_for_broker(cfg, stop, "run", on_wait=telemetry.set_waiting):
            return False
        try:
            reports = ensure_topics(cfg)
        except TopicAuthorizationError as e:
            # Waiting would not help until an admin changes the ACLs: stop, saying which.
            raise TopicAuthorizationError(cfg, e.operation, e.topics, e.why, "worker") from None
        except KafkaException as e:
            err = e.args[0]
            if not (err.retriable() or err.name() in _LOST):
                raise
            telemetry.set_waiting(f"creating topics at {cfg.kafka.bootstrap()}: {err.str()}")
            log.warning("creating topics failed (%s); waiting for the broker again", err.str())
            if stop.wait(1.0):
                return False
            continue
        for report in reports:
            if report.created:
                log.warning("created topic %s", report.name)
            for diff in report.differences:
                log.warning("topic %s differs from the expected config: %s", report.name, diff)
        return True


def _stop_on_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGTERM and SIGINT end the loop after the current batch, with a last commit. Returns
    the handlers replaced (none where signals cannot be set: not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, _frame: Any) -> None:
        log.info("%s: stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}


class _HupRoute:
    """SIGHUP's handler for the whole of `run`: routes it to the reloader once there is one,
    queues one reload until then, and without a config file only logs (SIGHUP's default
    action would kill the worker)."""

    def __init__(self, wants_reload: bool) -> None:
        self.wants_reload = wants_reload
        self.reloader: ConfigReloader | None = None
        self.pending = False

    def install(self) -> Any:
        """The previous handler, or None where signals cannot be set (not the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGHUP, self)

    def __call__(self, _signum: int, _frame: Any) -> None:
        reloader = self.reloader
        if reloader is not None:
            reloader.request()
        elif self.wants_reload:
            self.pending = True
            log.info("SIGHUP during startup: the config is reloaded once the worker is up")
        else:
            log.warning("SIGHUP: no config file to reload (started without --config)")

    def attach(self, reloader: ConfigReloader) -> None:
        # Handlers run on this (the main) thread between bytecodes: a signal before the
        # assignment sets `pending`, read below; one after it goes to the reloader directly.
        self.reloader = reloader
        if self.pending:
            self.pending = False
            reloader.request()
