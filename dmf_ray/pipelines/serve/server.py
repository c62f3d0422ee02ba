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
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)
        return False
    # The proxy of a local Ray inherits this environment: JSON error bodies (errors.JsonErrors).
    os.environ.setdefault(PROXY_HOOK_ENV, PROXY_HOOK)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
    return True


def _local_gpu_fallback(args: ServeArgs) -> ServeArgs:
    import ray

    if os.environ.get("RAY_ADDRESS") or args.gpu_encoders.num_gpus is not None or ray.cluster_resources().get("GPU"):
        return args
    # A GPU encoder's replica would wait forever for a GPU this machine lacks; neural encoders
    # pick their device when they load, so they run on the CPU instead.
    return args.model_copy(update={"gpu_encoders": args.gpu_encoders.model_copy(update={"num_gpus": 0.0})})


def _wait_for_stop_signal() -> int:
    """Block until SIGINT or SIGTERM; returns the signal. Later signals are ignored while the
    caller stops (a second Ctrl-C must not interrupt the clean-up half way)."""
    stop = threading.Event()
    got: list[int] = []

    def handler(signum, frame):
        got.append(signum)
        stop.set()

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
    return got[0]


def _stop(app_name: str, serve_was_running: bool, ray_started: bool) -> None:
    import ray
    from ray import serve

    # Quiet: replicas being torn down on purpose are not errors worth a paragraph.
    logging.getLogger("ray.serve").setLevel(logging.CRITICAL)
    try:
        if serve_was_running:
            serve.delete(app_name)
        else:
            serve.shutdown()
    finally:
        if ray_started:
            ray.shutdown()


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

    Blocking: runs until SIGINT / SIGTERM, then deletes the app, stops Serve (if it started it)
    and the local Ray (if it started it). Non-blocking: returns once the app is up; the caller
    deletes it. Raises ValueError / FileNotFoundError (one line) for a model that cannot be
    served, before Ray starts."""
    from dmf_ray.artifact import read_model_config
    from dmf_ray.pipelines.serve.builder import build_app, encoder_groups

    base = args.model_dump() if isinstance(args, ServeArgs) else dict(args or {})
    serve_args = ServeArgs.model_validate({**base, "model_dir": model_dir})
    encoder_groups(read_model_config(serve_args.model_dir))  # a bad model fails before Ray starts
    ray_started = _start_ray(serve_args.num_cpus)
    from ray import serve

    serve_was_running = False
    try:
        serve_args = _local_gpu_fallback(serve_args)
        serve_was_running = bool(serve.status().proxies)
        # The proxy's own timeout backs up the app's: a little longer, so the app's 504 names the cause.
        serve.start(http_options={"host": host, "port": port, "request_timeout_s": serve_args.request_timeout_s + 5},
                    logging_config={"enable_access_log": serve_args.access_log})
        serve.run(build_app(serve_args), name=app_name, route_prefix="/")
    except BaseException:
        _stop(app_name, serve_was_running, ray_started)
        raise
    url = f"http://{host}:{port}"
    print(f"serving {serve_args.model_dir} at {url}  (docs: {url}/docs; Ctrl-C stops)", flush=True)
    if not blocking:
        return url
    try:
        _wait_for_stop_signal()
        print("stopping the service ...", flush=True)
    finally:
        _stop(app_name, serve_was_running, ray_started)
    return url
