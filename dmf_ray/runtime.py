"""Connecting to Ray (a cluster named by RAY_ADDRESS, or a fresh local one) and running Ray
Data pipelines so that a failed one frees the cluster."""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import os
import types
from typing import Any, Callable, Iterator

# Set by whoever owns the process (the dmf CLI), read by every ensure_ray in it: extra ray.init
# keywords (log_to_driver, logging_level, num_cpus of a local Ray) and callables run once right
# after this process starts or joins Ray (e.g. quieting Ray Data's console output).
RAY_INIT_OPTIONS: dict[str, Any] = {}
AFTER_RAY_INIT: list[Callable[[], None]] = []


def ensure_ray(num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Attach to the cluster a job runs on, else start a local Ray for this process.

    ``address="local"`` (not auto-detection) for the laptop case: a cluster killed without
    ``ray stop`` leaves a stale address file that auto-detection would try and fail on.

    ``dashboard``: start a local Ray with its dashboard (bound to 127.0.0.1:8265, ~340 MB). Ray
    Train needs it: its placement-group cleaner asks the dashboard's State API every second
    whether the training controller is alive, and without one it cannot do its job and logs a
    warning each time. Other commands leave it off.

    With the dashboard, the local Ray's workers are told its address (``RAY_API_SERVER_ADDRESS``
    in the job's runtime_env): Ray Train's cleaner actor otherwise auto-detects the cluster, and
    with a second Ray on the host (another dmf command, a notebook, a test session) it raises
    "Found multiple active Ray instances" on its first check and stops watching, so a dead
    training run's placement group would not be freed."""
    import ray

    if ray.is_initialized():
        return
    options = {"logging_level": logging.WARNING, "log_to_driver": True, **RAY_INIT_OPTIONS}
    local_cpus = options.pop("num_cpus", None) if num_cpus is None else num_cpus
    options.pop("num_cpus", None)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**options)
    elif dashboard:
        port = _free_local_port()
        options["runtime_env"] = _with_env_var(options.get("runtime_env"), API_SERVER_ENV, f"http://127.0.0.1:{port}")
        ray.init(address="local", num_cpus=local_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=port, **options)
    else:
        ray.init(address="local", num_cpus=local_cpus, include_dashboard=False, **options)
    for hook in AFTER_RAY_INIT:
        hook()


# Ray's State API clients (ray.util.state, 2.60) find the dashboard from this variable before
# anything else (ray/dashboard/utils.py get_address_for_submission_client).
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


def _free_local_port(preferred: int = 8265) -> int:
    """``preferred`` (Ray's usual dashboard port) if it is free on 127.0.0.1 now, else a port the
    OS picks. Another process taking it before Ray binds it makes ray.init fail loudly."""
    import socket

    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # taken (another Ray's dashboard): let the OS pick
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free TCP port on 127.0.0.1")


def _with_env_var(runtime_env: dict[str, Any] | None, name: str, value: str) -> dict[str, Any]:
    """``runtime_env`` with ``env_vars[name] = value`` added (the caller's own value wins)."""
    merged = dict(runtime_env or {})
    merged["env_vars"] = {name: value, **dict(merged.get("env_vars") or {})}
    return merged


def cluster_resources() -> tuple[float, float]:
    """(CPUs, GPUs) of the connected cluster."""
    import ray

    resources = ray.cluster_resources()
    return float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0))


@contextlib.contextmanager
def pipeline_actors_killed_on_failure() -> Iterator[None]:
    """Run a Ray Data pipeline in this block; if it fails, its actors are killed before the
    error goes on.

    On failure Ray Data 2.60 shuts the executor down without force: it drops its own handles to
    the pool actors, but the tasks that were still in flight keep theirs (held in ways Python's
    garbage collector does not free, even once nothing in Python refers to the executor), and the
    forced shutdown that follows the iteration is then a no-op. Those actors kept their CPUs for
    as long as the process lived, and a rerun in the same process (a notebook, a caller that
    retries, a test) waited for CPUs that never came back."""
    try:
        yield
    except BaseException as error:
        for actor in _map_workers_reachable_from(error):
            _kill_quietly(actor)
        raise


def _map_workers_reachable_from(error: BaseException) -> list[Any]:
    """The Ray Data pool actors (``MapWorker``) that a failed pipeline's error still reaches.

    The error's traceback holds the frames that held the dead executor, which holds the tasks
    that were in flight, whose callbacks hold the actors. The walk steps through exceptions,
    tracebacks, the locals of their frames (and the callers of Ray Data's frames), containers,
    closures and Ray Data's own objects; never through modules, classes, function globals or
    the caller's frames, which reach the whole program and other pipelines' actors."""
    import functools

    from ray.actor import ActorHandle

    containers = (BaseException, dict, list, tuple, set, frozenset, collections.deque, functools.partial, types.MethodType)
    found: dict[int, Any] = {}
    seen: set[int] = set()
    stack: list[Any] = [error]
    while stack and len(seen) < 1_000_000:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, ActorHandle):
            if repr(obj).startswith("Actor(MapWorker("):  # Ray Data's pool actors
                found[id(obj)] = obj
        elif isinstance(obj, types.TracebackType):
            stack.extend(x for x in (obj.tb_frame, obj.tb_next) if x is not None)
        elif isinstance(obj, types.FrameType):
            stack.extend(obj.f_locals.values())
            if obj.f_back is not None and _is_ray_data_frame(obj.f_back):
                stack.append(obj.f_back)
        elif isinstance(obj, types.FunctionType):
            stack.extend(cell.cell_contents for cell in obj.__closure__ or () if _cell_is_set(cell))
        elif isinstance(obj, containers) or _is_ray_data_object(obj):
            stack.extend(ref for ref in gc.get_referents(obj) if not isinstance(ref, (type, types.ModuleType)))
    return list(found.values())


def _is_ray_data_object(obj: Any) -> bool:
    return type(obj).__module__.startswith("ray.data.")


def _is_ray_data_frame(frame: types.FrameType) -> bool:
    return str(frame.f_globals.get("__name__", "")).startswith("ray.data.")


def _cell_is_set(cell: types.CellType) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return False
    return True


def _kill_quietly(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone: nothing to free
        pass


def actor_cpus(cpus: float, actor_stages: int) -> float:
    """Logical CPUs for each CPU actor of ``actor_stages`` pools sized one actor per CPU."""
    # Logical CPUs per CPU actor such that every pool at full size still leaves a fifth of the
    # cluster to the read and write tasks: actors holding every CPU starve the reads and the
    # whole job hangs (ray-project/ray#44687). Actors then share cores, which is fine.
    return round(min(1.0, 0.8 * cpus / (actor_stages * max(1, int(cpus)))), 3)
