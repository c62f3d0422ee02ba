"""A recording progress callback and the checks every workflow's progress reports must pass."""

from __future__ import annotations

import threading


class ProgressRecorder:
    """Records ``(done, total, called from the main thread)`` for each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float | None, bool]] = []

    def __call__(self, done: float, total: float | None = None) -> None:
        self.calls.append((done, total, threading.current_thread() is threading.main_thread()))

    def phases(self) -> list[list[tuple[float, float | None]]]:
        """The calls cut where the total changes to another known value (evaluate's phases)."""
        out: list[list[tuple[float, float | None]]] = []
        known = None
        for done, total, _ in self.calls:
            if total is not None and known is not None and total != known or not out:
                out.append([])
            known = total if total is not None else known
            out[-1].append((done, total))
        return out

    def check(self, count: int, phase: int = -1) -> None:
        """Called, from the main thread only; ``done`` never goes down within a phase; the
        phase's last call is (count, count) and every total it gave is unknown or ``count``."""
        assert self.calls, "the progress callback was never called"
        assert all(main for *_, main in self.calls), "progress reported from another thread"
        calls = self.phases()[phase]
        dones = [d for d, _ in calls]
        assert dones == sorted(dones), dones
        assert calls[-1] == (count, count), calls
        assert {t for _, t in calls} <= {None, count}, calls
