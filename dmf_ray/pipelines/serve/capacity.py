"""Replica counts the cluster can place.

Serve asks Ray for every replica its autoscaler wants; on a fixed-size cluster a replica that
does not fit stays pending and takes the first resources that free up. Measured on a 2-CPU
node: Encoders scaled to 4 (3 pending); when the Ingress replica died a pending encoder took its
CPU and the service answered nothing for ~2 minutes. So on a cluster that cannot grow (a local
Ray: one node), every deployment's ``max_replicas`` is lowered until all of them at their
maximum, plus one spare ingress replica's resources, fit the cluster's CPUs and GPUs; the spare
keeps room to start a replacement ingress even while the dead one is still being torn down.
On a cluster whose autoscaler adds nodes for pending replicas, leave this off
(``cap_replicas: false``).
"""

from __future__ import annotations

from dataclasses import dataclass

from dmf_ray.pipelines.serve.args import DeploymentArgs


@dataclass
class Demand:
    """One deployment's per-replica request and replica bounds."""

    name: str
    args: DeploymentArgs
    num_cpus: float
    num_gpus: float

    @property
    def low(self) -> int:
        a = self.args.autoscaling
        return self.args.num_replicas if a is None else max(1, a.min_replicas)

    @property
    def high(self) -> int:
        a = self.args.autoscaling
        return self.args.num_replicas if a is None else a.max_replicas


class CapacityError(ValueError):
    """Even the minimum replica counts do not fit the cluster."""


def _needs(demands: list[Demand], highs: dict[str, int], spare_cpus: float) -> tuple[float, float]:
    cpus = sum(d.num_cpus * highs[d.name] for d in demands) + spare_cpus
    gpus = sum(d.num_gpus * highs[d.name] for d in demands)
    return cpus, gpus


def _too_small(demands: list[Demand], spare_cpus: float, cpus: float, gpus: float) -> str:
    lows = {d.name: d.low for d in demands}
    low_cpus, low_gpus = _needs(demands, lows, spare_cpus)
    each = ", ".join(f"{d.name} {d.low} x {d.num_cpus:g} CPU" + (f" {d.num_gpus:g} GPU" if d.num_gpus else "")
                     for d in demands)
    advice = []
    if low_gpus > gpus + 1e-9:  # a GPU shortage: more CPUs would not help
        advice.append("set gpu_encoders.num_gpus: 0 (--gpu-encoders-num-gpus 0) to run the GPU encoders on "
                      "the CPU, or give Ray more GPUs")
    if low_cpus > cpus + 1e-9:
        advice.append("lower num_cpus or min_replicas, or give Ray more CPUs")
    return (f"the Serve app needs {low_cpus:g} CPUs and {low_gpus:g} GPUs at its minimum replica counts ({each}, "
            f"plus {spare_cpus:g} CPU kept free to replace the ingress) but the cluster has {cpus:g} CPUs and "
            f"{gpus:g} GPUs: {'; '.join(advice)}")


def fit_replicas(demands: list[Demand], cpus: float, gpus: float, spare_cpus: float) -> dict[str, int]:
    """The highest replica count per deployment such that all deployments at that count, plus
    ``spare_cpus``, fit ``cpus`` and ``gpus`` (the cluster's totals).

    Lowers, one replica at a time, the deployment that holds the most resources above its
    minimum (so no one deployment is squeezed to its minimum while another keeps many).
    Returns {name: max replicas}. Raises CapacityError (one line, naming the sizes) when even
    the minimum counts do not fit."""
    highs = {d.name: max(d.high, d.low) for d in demands}
    eps = 1e-9
    while True:
        need_cpus, need_gpus = _needs(demands, highs, spare_cpus)
        if need_cpus <= cpus + eps and need_gpus <= gpus + eps:
            return highs
        over_gpu = need_gpus > gpus + eps
        movable = [d for d in demands if highs[d.name] > d.low and (d.num_gpus if over_gpu else d.num_cpus) > 0]
        if not movable:
            raise CapacityError(_too_small(demands, spare_cpus, cpus, gpus))
        key = (lambda d: d.num_gpus * (highs[d.name] - d.low)) if over_gpu else \
            (lambda d: d.num_cpus * (highs[d.name] - d.low))
        highs[max(movable, key=key).name] -= 1


def capped(args: DeploymentArgs, high: int) -> DeploymentArgs:
    """``args`` with max_replicas (or num_replicas) lowered to ``high``; unchanged if already lower."""
    a = args.autoscaling
    if a is None:
        return args if args.num_replicas <= high else args.model_copy(update={"num_replicas": high})
    if a.max_replicas <= high:
        return args
    update = {"max_replicas": high}
    if a.initial_replicas is not None and a.initial_replicas > high:
        update["initial_replicas"] = high
    return args.model_copy(update={"autoscaling": a.model_copy(update=update)})
