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


FALLBACK_CPUS = 0.1  # logical CPUs of a GPU encoder's replica run on the CPU by gpu_fallback


def gpu_fallback(args: ServeArgs, attached: bool, cluster_gpus: float) -> ServeArgs:
    """``args`` with ``gpu_encoders.num_gpus: 0`` when this process started a local Ray without
    GPUs and the user set no GPU count: a GPU encoder's replica would wait forever for a GPU
    this machine lacks, while neural encoders pick their device when they load, so they run on
    the CPU instead (and ``builder.plan_encoders`` gives them CPU-sized steps).

    Their replicas then reserve at most ``FALLBACK_CPUS`` logical CPUs: they share the cores
    with the CPU encoders' replica whatever they reserve, and at the GPU default (1 CPU each) the
    quickstart's model (fingerprints + ChemNet) could not be placed on a 2-CPU machine."""
    if attached or args.gpu_encoders.num_gpus is not None or cluster_gpus:
        return args
    cpus = min(args.gpu_encoders.num_cpus, FALLBACK_CPUS)
    return args.model_copy(update={"gpu_encoders": args.gpu_encoders.model_copy(update={"num_gpus": 0.0, "num_cpus": cpus})})


def _local_gpu_fallback(args: ServeArgs) -> ServeArgs:
    import ray

    attached = bool(os.environ.get("RAY_ADDRESS"))
    return gpu_fallback(args, attached, 0.0 if attached else float(ray.cluster_resources().get("GPU", 0.0)))


class AppNameTaken(ValueError):
    """An app of this name already runs on the cluster's Serve (``dmf serve`` would replace it)."""


def check_app_name(app_name: str, running_apps) -> None:
    """Raise ``AppNameTaken`` (one line) when ``app_name`` is among the running Serve apps:
    ``serve.run`` would silently replace that service, and this process's Ctrl-C delete it."""
    if app_name in running_apps:
        raise AppNameTaken(
            f"a Serve app named {app_name!r} already runs on this Ray cluster's Serve; dmf serve "
            "would replace it: stop that service first, or serve from another cluster")


def served_url(host: str, port: int, serve_was_running: bool,
               proxy: tuple[str, int] | None) -> tuple[str, str | None]:
    """(the URL the service answers at, a note or None). Serve keeps the HTTP address it started
    with, so on a Serve that already ran, a --host/--port asking for another is ignored: the URL
    is the running proxy's (``proxy``: its (host, port), None if it could not be read), with a
    note saying so."""
    requested = f"http://{host}:{port}"
    if not serve_was_running:
        return requested, None
    if proxy is None:
        return requested, ("Serve already ran on this cluster and keeps its own HTTP address, which could not "
                           "be read: --host/--port may have been ignored")
    url = f"http://{proxy[0]}:{proxy[1]}"
    if (proxy[0], int(proxy[1])) == (host, int(port)):
        return url, None
    return url, (f"--host {host} --port {port} ignored: Serve already ran on this cluster with its own HTTP "
                 f"address ({proxy[0]}:{proxy[1]})")


def _proxy_address() -> tuple[str, int] | None:
    try:
        from ray.serve import context

        config = context._get_global_client().http_config  # no public accessor in Ray 2.60
        return str(config.host), int(config.port)
    except Exception:  # noqa: BLE001 - only the printed address depends on it
        return None


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


def _stop(app_name: str | None, serve_was_running: bool, ray_started: bool) -> None:
    """Delete ``app_name`` (None: an app this process did not deploy, left alone), stop Serve
    if this process started it, and the local Ray if it started it."""
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
            if app_name is not None and app_name in serve.status().applications:
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
    (one line) for a model that cannot be served, before Ray starts.

    On a cluster where Serve already runs: raises ``AppNameTaken`` (a ValueError, one line) if an
    app named ``app_name`` runs there (nothing is replaced or deleted); otherwise deploys beside
    the other apps, on Serve's existing HTTP address (printed and returned; a note says when
    ``host``/``port`` differ from it), and on stop deletes only its own app."""
    from dmf_ray.artifact import read_model_config
    from dmf_ray.pipelines.serve.builder import encoder_groups

    base = args.model_dump() if isinstance(args, ServeArgs) else dict(args or {})
    serve_args = ServeArgs.model_validate({**base, "model_dir": model_dir})
    encoder_groups(read_model_config(serve_args.model_dir))  # a bad model fails before Ray starts
    url = f"http://{host}:{port}"
    signals = _StopSignals() if blocking else None
    # ``app``: the app name once this process may deploy it (None before: never delete another's).
    state = {"ray_started": False, "serve_was_running": True, "app": None}
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

        status = serve.status()
        state["serve_was_running"] = bool(status.proxies)
        if state["serve_was_running"]:
            check_app_name(app_name, status.applications)
        state["app"] = app_name
        _deploy(_local_gpu_fallback(serve_args), host, port, app_name)
        url, note = served_url(host, port, state["serve_was_running"],
                               _proxy_address() if state["serve_was_running"] else None)
        if note:
            print(note, flush=True)
        print(f"serving {serve_args.model_dir} at {url}  (docs: {url}/docs; Ctrl-C stops)", flush=True)
        if not blocking:
            return url
        signals.wait()
    except StopRequested:
        pass
    except BaseException:
        _stop(state["app"], state["serve_was_running"], state["ray_started"])
        raise
    signals.ignore()
    print("stopping the service ...", flush=True)
    _stop(state["app"], state["serve_was_running"], state["ray_started"])
    return url
