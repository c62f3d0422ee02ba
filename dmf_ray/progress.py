"""Progress reports of the long workflows (featurize, embed, evaluate) to a caller's callback.

A workflow takes ``progress: Callable[[done, total], None] | None`` and calls it from the driver
thread only (never from a Ray worker or a helper thread), with ``done`` non-decreasing and
``total`` None while unknown; its docstring names the unit. ``dmf`` hands each workflow the
update of a rich progress bar (``dmf_ray.cli.console``).

A callback that raises does not break the job: the first error is logged in one line and the
callback is not called again (a progress display is never worth a lost featurisation).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

ProgressCallback = Callable[[float, "float | None"], None]


class Reporter:
    """Calls ``callback(done, total)`` for a workflow, shielding the workflow from its errors."""

    def __init__(self, callback: ProgressCallback | None, log: Callable[[str], None], workflow: str):
        self._callback, self._log, self._workflow = callback, log, workflow

    @property
    def wanted(self) -> bool:
        """Whether anyone listens (work done only for the progress display can be skipped)."""
        return self._callback is not None

    def __call__(self, done: float, total: float | None = None) -> None:
        if self._callback is None:
            return
        try:
            self._callback(done, total)
        except Exception as exc:  # not BaseException: Ctrl-C in a callback still stops the job
            self._callback = None
            self._log(f"{self._workflow}: the progress callback failed ({type(exc).__name__}: {exc}); "
                      "continuing without progress reports")


class RowCount:
    """Input rows of ``files`` counted in a background thread with the readers' own rules
    (``dmf_ray.inputs.read_chunks``: blank lines, headers and malformed rows exactly as the
    pipeline sees them), leaving out the chunks in ``skip``. ``total`` is None until the count
    is done (or when a file cannot be read: the pipeline reads it too and reports the problem).

    The thread only reads files and sets ``total``; it never calls a progress callback."""

    def __init__(self, files: Iterable[Any], chunk_rows: int, skip: set[str] | frozenset[str] = frozenset()):
        self.total: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._count, args=(list(files), chunk_rows, skip),
                                        name="dmf-row-count", daemon=True)
        self._thread.start()

    def _count(self, files: list[Any], chunk_rows: int, skip: set[str] | frozenset[str]) -> None:
        from dmf_ray.inputs import read_chunks

        rows = 0
        try:
            for file in files:
                for chunk in read_chunks(file, chunk_rows, skip):
                    if self._stop.is_set():
                        return
                    rows += len(chunk.rows)
        except Exception:
            return
        self.total = rows

    def stop(self) -> None:
        """Stop counting (the workflow ended first) without waiting for the thread."""
        self._stop.set()
