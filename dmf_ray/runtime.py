"""Connecting to Ray: a cluster named by RAY_ADDRESS, or a fresh local one."""

from __future__ import annotations

import logging
import os


def ensure_ray(num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Attach to the cluster a job runs on, else start a local Ray for this process.

    ``address="local"`` (not auto-detection) for the laptop case: a cluster killed without
    ``ray stop`` leaves a stale address file that auto-detection would try and fail on.

    ``dashboard``: start a local Ray with its dashboard (bound to 127.0.0.1:8265, ~340 MB). Ray
    Train needs it: its placement-group cleaner asks the dashboard's State API every second
    whether the training controller is alive, and without one it cannot do its job and logs a
    warning each time. Other commands leave it off."""
    import ray

    if ray.is_initialized():
        return
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, **quiet)


def cluster_resources() -> tuple[float, float]:
    """(CPUs, GPUs) of the connected cluster."""
    import ray

    resources = ray.cluster_resources()
    return float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0))
