"""Watcher: polls the registry's revision (ETag) and hands changes to the engine, without a restart.

Every ``interval_s`` (<= 1 s) it asks its RevisionSource ``poll(etag)``: None means unchanged (HTTP 304),
otherwise a RegistrySnapshot with the served composition's withdrawn members and its latest version.
    - withdrawn set changed      -> engine.apply_withdrawn(names)   (applied before the engine's next forward)
    - a newer composition version -> prepare(snapshot) here (download, verify), then engine.swap(builder)
    - no successful poll for ``stale_after_s`` -> engine.set_fail_closed(True): public base only, because
      the server can no longer prove an expert was not withdrawn; back to normal on the next good poll.

Bound: a withdrawal committed at time t is seen by t + interval + one round trip and applied before the
next forward (one decode step); with the default 0.5 s interval that is well under the 2 s target.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

log = logging.getLogger("expertmesh.serving")


@dataclass(frozen=True)
class RegistrySnapshot:
    etag: str
    withdrawn: frozenset[str]                  # members of the served composition that are withdrawn
    composition_version: str | None = None     # latest stored version of the served composition
    revision: int | None = None
    detail: dict = field(default_factory=dict, compare=False)


class RevisionSource(Protocol):
    def poll(self, etag: str | None) -> RegistrySnapshot | None:
        """None when nothing changed since ``etag``; raise on failure (counted towards staleness)."""


class Watcher:
    def __init__(self, source: RevisionSource, engine, *, interval_s: float = 0.5, stale_after_s: float = 10.0,
                 prepare: Callable[[RegistrySnapshot], Callable] | None = None):
        """``prepare(snapshot)`` downloads a newer composition version and returns the builder the engine
        runs between two steps (None: new versions are ignored, only withdrawals apply)."""
        self.source, self.engine = source, engine
        self.interval_s, self.stale_after_s = interval_s, stale_after_s
        self.prepare = prepare
        self.etag: str | None = None
        self.snapshot: RegistrySnapshot | None = None
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.polls = self.failures = 0
        self._stale = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def start(self) -> "Watcher":
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._started = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="expertmesh-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def poll_once(self) -> bool:
        """One poll; True if something changed. Raises what the source raises."""
        t_seen = time.monotonic()
        snap = self.source.poll(self.etag)
        self.polls += 1
        self.last_ok = time.monotonic()
        if self._stale:
            self._stale = False
            self.engine.set_fail_closed(False)
        if snap is None:
            return False
        old, self.snapshot, self.etag = self.snapshot, snap, snap.etag
        changed = False
        if old is None or snap.withdrawn != old.withdrawn:
            self.engine.apply_withdrawn(set(snap.withdrawn), revision=snap.revision, seen_at=t_seen)
            changed = True
        current = getattr(self.engine.comp, "version", None)
        # a restored member that was not loaded (withdrawn at load time) also needs a reload
        returning = set(snap.detail.get("active", [])) - set(self.engine.comp.members)
        if (self.prepare is not None and snap.composition_version is not None
                and (str(snap.composition_version) != str(current) or returning)):
            builder = self.prepare(snap)
            self.engine.swap(builder, revision=snap.revision)
            changed = True
        return changed

    def status(self) -> dict:
        age = None if self.last_ok is None else round(time.monotonic() - self.last_ok, 3)
        return {"configured": True, "etag": self.etag, "revision": self.snapshot and self.snapshot.revision,
                "composition_version": self.snapshot and self.snapshot.composition_version,
                "last_ok_age_s": age, "stale": self._stale or self.last_ok is None, "polls": self.polls,
                "failures": self.failures, "last_error": self.last_error, "interval_s": self.interval_s}

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.poll_once()
                self.last_error = None
            except Exception as exc:     # the registry may be down; keep polling, fail closed when stale
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                since = self.last_ok if self.last_ok is not None else self._started
                if not self._stale and time.monotonic() - since > self.stale_after_s:
                    self._stale = True
                    log.warning("registry unreachable for %.1f s: %s", time.monotonic() - since, self.last_error)
                    self.engine.set_fail_closed(True, self.last_error)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))
