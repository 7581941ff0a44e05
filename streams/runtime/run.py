"""`auditwatch run`: the Processor driven by the micro-batch runtime (streams.runtime).

This module sets the worker up (topics, the config reloader, telemetry, the control topic,
SIGHUP) and runs it until SIGTERM/SIGINT; the runtime does the Kafka side.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from schemas.codec import BundledSchemas, SchemaResolver
from streams.ops.config import Config
from streams.ops.control import ControlReader
from streams.ops.metrics import InputWatch, Telemetry, start_http
from streams.ops.reload import ConfigReloader
from streams.ops.topics import ensure_topics
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
    for report in ensure_topics(cfg):
        if report.created:
            log.warning("created topic %s", report.name)
        for diff in report.differences:
            log.warning("topic %s differs from the expected config: %s", report.name, diff)
    reloader = ConfigReloader(config_path, cfg, reload_poll_s).start() if config_path else None
    if reloader is not None:
        hup.attach(reloader)
    processor = Processor(cfg, make_resolver(cfg))
    telemetry = Telemetry(cfg, processor)
    worker = Worker(cfg, processor, telemetry, reloader)
    server = start_http(telemetry, cfg)
    watch = None
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
    stop = stop or threading.Event()
    previous = _stop_on_signals(stop)
    try:
        worker.start()
        worker.run(stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if watch is not None:
            watch.stop()
        if server is not None:
            server.stop()
        control.stop()
        if reloader is not None:
            reloader.stop()
    return processor


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
