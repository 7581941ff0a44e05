"""Config reload for `auditwatch run`: on SIGHUP, or when the config file changes, the new
detection settings take effect without a restart and without losing anything learned.

Only the `detectors` section is reloaded. Baselines live in the state stores and are kept;
the detection core swaps its settings between two events, on the processing thread (a
background thread reads and validates the file; the processing thread picks the result up).
Other sections (kafka, topics, input...) and `detectors.groups` are not reloaded, with a
warning: the first ones shape clients and topics made at start, and a peer-group change
would move machines to other detection partitions, away from their baselines. An invalid
file is logged and the running config kept.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from streams.ops.config import Config, ConfigError, load_config

log = logging.getLogger("auditwatch.reload")


def merge(current: Config, new: Config) -> tuple[Config, list[str]]:
    """`current` with the reloadable part of `new`, and a warning per change left out."""
    ignored = [
        f"{section} changed: takes effect only after a restart"
        for section in type(new).model_fields
        if section != "detectors" and getattr(new, section) != getattr(current, section)
    ]
    detectors = new.detectors
    if detectors.groups != current.detectors.groups:
        ignored.append(
            "detectors.groups changed: not reloaded, since it moves machines to other "
            "detection partitions, away from their learned baselines; restart (and re-seed) "
            "to change peer groups"
        )
        detectors = detectors.model_copy(update={"groups": current.detectors.groups})
    return current.model_copy(update={"detectors": detectors}), ignored


class ConfigReloader:
    """Reloads `path` when asked (`request()`, e.g. from a SIGHUP handler) or, with
    `poll_s` > 0, when the file's modification time or size changes."""

    def __init__(self, path: str | Path, current: Config, poll_s: float = 0.0) -> None:
        self.path = Path(path)
        self.current = current
        self.poll_s = poll_s
        self.reloads = 0
        self.refused = 0
        self._pending: Config | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stamp = self._file_stamp()
        self._thread: threading.Thread | None = None

    def start(self) -> ConfigReloader:
        self._thread = threading.Thread(target=self._run, name="auditwatch-reload", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def request(self) -> None:
        """Reload soon. Safe from a signal handler: it only sets an event."""
        self._wake.set()

    def apply(self, processor: Any) -> None:
        """On the processing thread, between events: put a validated new config in effect."""
        if self._pending is None:
            return
        with self._lock:
            cfg, self._pending = self._pending, None
        if cfg is None:
            return
        old = processor.core.config_version
        processor.core.reconfigure(cfg.detectors.build())
        processor.cfg = cfg
        log.info(
            "detection config version %s in effect (was %s); baselines kept",
            processor.core.config_version,
            old,
        )

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _run(self) -> None:
        while not self._stop.is_set():
            asked = self._wake.wait(self.poll_s if self.poll_s > 0 else None)
            if self._stop.is_set():
                return
            self._wake.clear()
            stamp = self._file_stamp()
            if not asked and (stamp is None or stamp == self._stamp):
                continue
            self._stamp = stamp
            self.reload()

    def reload(self) -> Config | None:
        """Read and validate the file now; returns the config that will apply (None if the
        file is invalid or changes nothing reloadable)."""
        try:
            new = load_config(self.path)
        except ConfigError as e:
            self.refused += 1
            log.error("config reload refused, keeping the running config: %s", e)
            return None
        merged, ignored = merge(self.current, new)
        for warning in ignored:
            log.warning("config reload: %s", warning)
        old_version = self.current.detectors.build().version()
        version = merged.detectors.build().version()
        if version == old_version:
            log.info("config %s reloaded: detection settings unchanged", self.path)
            return None
        with self._lock:
            self._pending = merged
            self.current = merged
        self.reloads += 1
        log.info(
            "config %s reloaded: detection config version %s -> %s, applied from the next event",
            self.path,
            old_version,
            version,
        )
        return merged
