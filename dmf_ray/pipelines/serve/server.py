"""``dmf serve``: run the app until SIGINT / SIGTERM, then end it and the local Ray it started.

What went wrong before (2-core machine, Ray 2.60): SIGTERM killed the driver without cleanup,
so the dashboard and runtime-env agents of its local Ray lived on for minutes; Ctrl-C raised
KeyboardInterrupt wherever the main thread was and printed Serve's "graceful_shutdown failed"
text. Here both signals only set an event; the main thread then deletes the app, stops Serve
and, if this process started the local Ray, shuts it down (which stops every process of that
cluster), all within seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import yaml

from dmf_ray.pipelines.serve.args import ServeArgs
from dmf_ray.pipelines.serve.errors import PROXY_HOOK, PROXY_HOOK_ENV

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def load_serve_config(path: str) -> tuple[dict[str, Any], str, int]:
    """(the app's ``args``, http host, http port) from a Serve config file like
    serve_configs/fusion.yaml (its first application). Raises ValueError naming the file."""
    with open(path, encoding="utf-8") as f:
        try:
            doc = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from None
    apps = (doc or {}).get("applications") if isinstance(doc, dict) else None
    if not apps or not isinstance(apps[0], dict) or not isinstance(apps[0].get("args"), dict):
        raise ValueError(f"{path}: expected a Serve config with applications[0].args (see serve_configs/fusion.yaml)")
    http = doc.get("http_options") or {}
    return dict(apps[0]["args"]), str(http.get("host", "127.0.0.1")), int(http.get("port", 8000))


def _start_ray(num_cpus: int | None) -> bool:
    """Attach to RAY_ADDRESS's cluster, else start a local Ray; True if this process started it."""
    import ray

    if ray.is_initialized():
        return False
    from dmf_ray import runtime

    # The process-wide output settings the CLI chose (runtime.RAY_INIT_OPTIONS, AFTER_RAY_INIT).
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True,
             **{k: v for k, v in runtime.RAY_INIT_OPTIONS.items() if k != "num_cpus"}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)
        started = False
    else:
        # The proxy of a local Ray inherits this environment: JSON error bodies (errors.JsonErrors).
        os.environ.setdefault(PROXY_HOOK_ENV, PROXY_HOOK)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
        started = True
    for hook in runtime.AFTER_RAY_INIT:
        hook()
    return started


def _local_gpu_fallback(args: ServeArgs) -> ServeArgs:
    import ray

    if os.environ.get("RAY_ADDRESS") or args.gpu_encoders.num_gpus is not None or ray.cluster_resources().get("GPU"):
        return args
    # A GPU encoder's replica would wait forever for a GPU this machine lacks; neural encoders
    # pick their device when they load, so they run on the CPU instead.
    return args.model_copy(update={"gpu_encoders": args.gpu_encoders.model_copy(update={"num_gpus": 0.0})})


class StopRequested(BaseException):
    """SIGINT / SIGTERM arrived while the service was starting."""


class _StopSignals:
    """SIGINT and SIGTERM stop the service, at any moment: while it starts they interrupt the
    start-up (``StopRequested``); once it runs they set ``event``. Later signals are ignored
    while stopping, so a second Ctrl-C cannot interrupt the clean-up half way.

    Installed again after ``ray.init``: Ray replaces SIGTERM with a handler that exits the
    interpreter mid-call, and its core worker's fatal-signal handler then aborts the process
    (the SIGABRT seen after ``kill``)."""

    def __init__(self):
        self.event = threading.Event()
        self.starting = True

    def _handler(self, signum, frame) -> None:
        first = not self.event.is_set()
        self.event.set()
        if first and self.starting:
            raise StopRequested(signum)

    def install(self) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, self._handler)

    def ignore(self) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)

    def wait(self) -> None:
        self.starting = False
        while not self.event.wait(1.0):
            pass


def _stop(app_name: str, serve_was_running: bool, ray_started: bool) -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    # Quiet: replicas being torn down on purpose are not errors worth a paragraph.
    logging.getLogger("ray.serve").setLevel(logging.CRITICAL)
    try:
        # serve.shutdown() kills its controller while a task of it is pending, and the raylet
        # prints "graceful_shutdown failed ... killed by ray.kill"; a cluster we started goes
        # as a whole after the app's graceful delete, controller and proxies with it.
        if serve_was_running or ray_started:
            if app_name in serve.status().applications:
                serve.delete(app_name)
        else:
            serve.shutdown()
    except Exception as exc:  # noqa: BLE001 - the cluster goes next anyway when we started it
        print(f"stopping Serve: {type(exc).__name__}: {exc}", flush=True)
    finally:
        if ray_started:
            ray.shutdown()


def _deploy(serve_args: ServeArgs, host: str, port: int, app_name: str) -> None:
    from ray import serve

    from dmf_ray.pipelines.serve.builder import build_app

    # The proxy's own timeout backs up the app's: a little longer, so the app's 504 names the cause.
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": serve_args.request_timeout_s + 5},
                logging_config={"enable_access_log": serve_args.access_log})
    serve.run(build_app(serve_args), name=app_name, route_prefix="/")


def run_server(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    args: ServeArgs | dict | None = None,
    app_name: str = "dmf",
    blocking: bool = True,
) -> str:
    """Serve ``model_dir`` at http://host:port/ on the Ray cluster of RAY_ADDRESS, else on a
    local one (``args.num_cpus`` CPUs); returns the URL. ``args``: any other ServeArgs fields.

    Blocking: runs until SIGINT / SIGTERM (also while starting), then deletes the app, stops
    Serve (if it started it) and the local Ray (if it started it), and returns. Non-blocking:
    returns once the app is up; the caller deletes it. Raises ValueError / FileNotFoundError
    (one line) for a model that cannot be served, before Ray starts."""
    from dmf_ray.artifact import read_model_config
    from dmf_ray.pipelines.serve.builder import encoder_groups

    base = args.model_dump() if isinstance(args, ServeArgs) else dict(args or {})
    serve_args = ServeArgs.model_validate({**base, "model_dir": model_dir})
    encoder_groups(read_model_config(serve_args.model_dir))  # a bad model fails before Ray starts
    url = f"http://{host}:{port}"
    signals = _StopSignals() if blocking else None
    state = {"ray_started": False, "serve_was_running": True}
    try:
        if signals:
            signals.install()
        import ray

        # Known before ray.init, so a signal in the middle of it still stops what it started.
        state["ray_started"] = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
        _start_ray(serve_args.num_cpus)
        if signals:
            signals.install()  # ray.init replaced SIGTERM's handler
        from ray import serve

        state["serve_was_running"] = bool(serve.status().proxies)
        _deploy(_local_gpu_fallback(serve_args), host, port, app_name)
        print(f"serving {serve_args.model_dir} at {url}  (docs: {url}/docs; Ctrl-C stops)", flush=True)
        if not blocking:
            return url
        signals.wait()
    except StopRequested:
        pass
    except BaseException:
        _stop(app_name, state["serve_was_running"], state["ray_started"])
        raise
    signals.ignore()
    print("stopping the service ...", flush=True)
    _stop(app_name, state["serve_was_running"], state["ray_started"])
    return url
