"""What a dmf command prints: its own lines, one progress display per long step (rich), and Ray's
own output (progress tables, worker lines, deprecation warnings, core-worker ERROR lines) only
with ``--verbose``; otherwise that output goes to the Ray session's log files.

How Ray 2.60 is quietened (read in the installed source):

- ``ray.init(log_to_driver=False)``: worker and actor stdout/stderr (Ray Train's controller,
  Ray Data's SplitCoordinator, deprecation warnings in actors) stay in the session's worker
  logs instead of being echoed, with ANSI-coloured prefixes, to the driver;
- ``ray.init(logging_level=ERROR)``: the driver's ``ray`` logger (token-auth warning, "Started
  a local Ray instance");
- Ray Data's ``ray.data`` logger does not propagate and has its own console handler at INFO
  (``ray/data/_internal/logging.py``): that handler is raised to ERROR, its file handler
  (``logs/ray-data/ray-data.log``) keeps everything; ``DataContext.enable_progress_bars`` and
  ``print_on_execution_start`` off (without a TTY Ray Data logs a progress table every 10 s);
- the driver's C++ core worker writes its log lines (e.g. ``core_worker.cc ... constructor
  arguments in the object store and max_restarts > 0`` at ERROR level, once per actor pool,
  ray-project/ray#57733) straight to file descriptor 2, where no Python setting reaches: fd 2 is
  pointed at ``logs/dmf-driver-stderr.log`` in the session directory, and Python's
  ``sys.stderr`` (dmf's lines, tracebacks) keeps the terminal.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

# own_process: dmf runs as its own command (not main([...]) called inside another program, such
# as a test session), so it may take over file descriptor 2.
_state: dict[str, Any] = {"verbose": False, "live": None, "own_process": False}


def setup(verbose: bool = False, num_cpus: int | None = None, worker_lines: bool = False) -> None:
    """Choose, before Ray starts, how Ray talks to the terminal for this process.

    ``worker_lines``: echo the stdout/stderr of Ray's workers and actors (Serve's access log)
    without the rest of Ray's output."""
    from dmf_ray import runtime

    _state["verbose"] = verbose
    runtime.RAY_INIT_OPTIONS.clear()
    if num_cpus is not None:
        runtime.RAY_INIT_OPTIONS["num_cpus"] = num_cpus
    if verbose:
        if not _is_terminal(sys.stderr):
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # worker-line prefixes without ANSI codes
        runtime.AFTER_RAY_INIT[:] = []
        return
    runtime.RAY_INIT_OPTIONS.update(log_to_driver=worker_lines, logging_level=logging.ERROR)
    runtime.AFTER_RAY_INIT[:] = [quiet_ray]


def quiet_ray() -> None:
    """Send Ray's console output of this driver to the session's logs (called after ray.init)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    data_logger = logging.getLogger("ray.data")
    for handler in data_logger.handlers:
        if not isinstance(handler, logging.FileHandler) and type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.ERROR)
    for name in ("ray.train", "ray.tune", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if _state["own_process"]:
        _c_stderr_to(ray_logs_dir())


def ray_logs_dir() -> str | None:
    """This driver's Ray session log folder (None before ray.init)."""
    try:
        import ray

        return ray._private.worker._global_node.get_logs_dir_path()  # no public accessor in 2.60
    except Exception:
        return None


def _c_stderr_to(logs_dir: str | None) -> None:
    """Point file descriptor 2 at a log file, keeping ``sys.stderr`` on the terminal."""
    if logs_dir is None or _state.get("fd2_moved"):
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    log_fd = os.open(os.path.join(logs_dir, "dmf-driver-stderr.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    _state["fd2_moved"] = True


def log(message: str) -> None:
    """One line of dmf's own, above a live progress display if one is shown."""
    live = _state["live"]
    if live is not None:
        live.console.print(message, markup=False, highlight=False, soft_wrap=True)
    else:
        print(message, file=sys.stderr, flush=True)


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Step:
    """Progress of one long step: ``update(done, total)`` moves its bar (total None = unknown)."""

    def __init__(self, progress: Any = None, task: Any = None):
        self._progress, self._task = progress, task

    @property
    def live(self) -> bool:
        """Whether a bar is shown (a terminal, without --verbose)."""
        return self._progress is not None

    def update(self, done: float, total: float | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)


@contextlib.contextmanager
def step(description: str) -> Iterator[Step]:
    """A progress display for one long step (rich): a spinner, a bar once the step reports its
    total, counts and elapsed time. Shown only on a terminal and without --verbose (Ray's own
    progress output then has the terminal); it disappears when the step ends, so the step's
    summary line stays as the record."""
    if _state["verbose"] or not _is_terminal(sys.stderr):
        yield Step()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        _state["live"] = progress
        try:
            yield Step(progress, progress.add_task(description, total=None))
        finally:
            _state["live"] = None


def with_progress(function: Callable[..., Any], bar: Step, *args: Any, **kwargs: Any) -> Any:
    """Call a workflow, handing it ``progress=bar.update`` if it takes a progress callback and
    the bar is shown: without one, the workflow skips the work done only for the display (featurize
    and embed count the input rows by reading the files a second time)."""
    if bar.live and "progress" in inspect.signature(function).parameters:
        kwargs["progress"] = bar.update
    return function(*args, **kwargs)


def add_run_flags(parser: Any, ray: bool = True) -> None:
    """--num-cpus (commands that start Ray) and --verbose."""
    if ray:
        parser.add_argument("--num-cpus", type=int, default=None, metavar="N",
                            help="CPUs of the local Ray this command starts (default: all of this machine); "
                                 "ignored when RAY_ADDRESS names a cluster")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's own output (progress tables, worker and actor lines); by default "
                             "it goes only to the Ray session's logs")


def own_process(yes: bool) -> None:
    """Whether dmf runs as its own command (``dmf ...``, ``python -m dmf_ray.cli``, a job entry
    point) rather than ``main([...])`` inside another program: only then is the driver's C-level
    stderr pointed at the Ray logs."""
    _state["own_process"] = yes


def owns_process() -> bool:
    """What ``own_process`` was last told (False before it is)."""
    return bool(_state.get("own_process"))


@contextlib.contextmanager
def follow(bar: Step, measure: Callable[[], float], total: float | None, every_s: float = 1.0) -> Iterator[None]:
    """Move ``bar`` to ``measure()`` every ``every_s`` seconds while the block runs: progress of
    a workflow that reports it only in its files (e.g. one metrics line per training epoch)."""
    if not bar.live:
        yield
        return
    import threading

    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every_s):
            try:
                bar.update(measure(), total)
            except OSError:  # not written yet
                pass

    thread = threading.Thread(target=poll, name="dmf-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
