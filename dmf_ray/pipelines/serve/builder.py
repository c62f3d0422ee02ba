"""The Serve application for one model, from typed ``ServeArgs``: which deployments, with what
resources, and how many replicas the cluster can place."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ray import serve

from dmf_ray.artifact import read_model_config
from dmf_ray.pipelines.serve.args import DeploymentArgs, ServeArgs
from dmf_ray.pipelines.serve.backends import Encoders, FusionModel
from dmf_ray.pipelines.serve.capacity import Demand, capped, fit_replicas
from dmf_ray.pipelines.serve.ingress import Ingress
from dmf_ray.pipelines.serve.responses import FUSION, INGRESS

logger = logging.getLogger(__name__)

CPU_ENCODERS = "Encoders"
GPU_ENCODER_PREFIX = "Encoder-"


def encoder_groups(card: dict) -> dict[str, list[str]]:
    """Deployment name -> modalities: every CPU encoder in one, each GPU encoder alone."""
    specs = card.get("modalities", {})
    modalities = list(card["fusion"]["modalities"])
    missing = [m for m in modalities if m not in specs]
    if missing:
        raise ValueError(f"config.json has no encoder spec for {', '.join(missing)}")
    groups: dict[str, list[str]] = {}
    for m in modalities:
        if float(specs[m].get("num_gpus", 0.0)) > 0:
            groups[GPU_ENCODER_PREFIX + "".join(c if c.isalnum() or c in "-_." else "_" for c in m)] = [m]
        else:
            groups.setdefault(CPU_ENCODERS, []).append(m)
    return groups


def deployment_options(d: DeploymentArgs, num_gpus: float = 0.0, access_log: bool = False) -> dict[str, Any]:
    """Serve deployment options from typed args."""
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": num_gpus},
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "health_check_period_s": d.health_check_period_s,
        "health_check_timeout_s": d.health_check_timeout_s,
        "logging_config": {"enable_access_log": access_log},
    }
    if d.autoscaling is None:
        opts["num_replicas"] = d.num_replicas
    else:
        opts["autoscaling_config"] = d.autoscaling.model_dump(exclude_none=True)
    return opts


def deployment_roles(args: ServeArgs, groups: dict[str, list[str]],
                     specs: dict) -> dict[str, tuple[DeploymentArgs, float]]:
    """Deployment name -> (its args, GPUs per replica), for every deployment of the app."""
    roles: dict[str, tuple[DeploymentArgs, float]] = {INGRESS: (args.ingress, 0.0)}
    for name, mods in groups.items():
        if name == CPU_ENCODERS:
            roles[name] = (args.encoders, args.encoders.num_gpus or 0.0)
        else:
            d = args.gpu_encoders
            roles[name] = (d, d.num_gpus if d.num_gpus is not None else float(specs[mods[0]]["num_gpus"]))
    if args.separate_fusion:
        roles[FUSION] = (args.fusion, args.fusion.num_gpus or 0.0)
    return roles


@dataclass
class EncoderPlan:
    """How one encoder deployment runs: its modalities, Serve options and work-queue steps."""

    modalities: list[str]
    options: dict[str, Any]
    step_atoms: int
    max_step_molecules: int
    together: bool  # one encoder call per step across requests (a neural encoder, on GPU or CPU)


def plan_encoders(args: ServeArgs, groups: dict[str, list[str]],
                  roles: dict[str, tuple[DeploymentArgs, float]]) -> dict[str, EncoderPlan]:
    """Deployment name -> ``EncoderPlan``, from the GPUs each deployment is actually given
    (``roles``), not from its kind: a GPU encoder run on the CPU (``gpu_encoders.num_gpus: 0``,
    ``dmf serve``'s fallback on a machine without GPUs) gets the CPU encoders' small fair steps,
    each encoded in one call over every waiting request's share."""
    plans = {}
    for name, mods in groups.items():
        d, gpus = roles[name]
        # On a GPU a batch costs about the same for 1 or 512 molecules, so requests are batched
        # together in large steps; on a CPU steps stay small, so a one-molecule request does not
        # wait behind a 512-molecule step. The CPU encoders (RDKit) loop per molecule, so each
        # request's slice can be its own call; a neural encoder run on the CPU pays a fixed cost
        # per call, so its step is one call over every request's slice, and larger: job by job in
        # 200-atom steps, 4 clients of 256 molecules each got 57 mol/s from ChemNet against 192
        # for one client (2 cores); one call per step 137, with 800-atom steps 235.
        gpu, neural = gpus > 0, name != CPU_ENCODERS
        step_atoms = (max(args.encode_step_atoms, 64 * d.max_batch_molecules) if gpu
                      else args.neural_step_atoms if neural else args.encode_step_atoms)
        plans[name] = EncoderPlan(mods, deployment_options(d, gpus, args.access_log), step_atoms,
                                  d.max_batch_molecules, together=gpu or neural)
    return plans


def _should_cap(args: ServeArgs) -> bool:
    import ray

    if args.cap_replicas is not None:
        return args.cap_replicas
    # A single node cannot grow: a local Ray, or a one-machine cluster. A multi-node cluster is
    # left to its operator (sized for the app, or an autoscaler adds nodes for pending replicas).
    return ray.is_initialized() and sum(1 for n in ray.nodes() if n.get("Alive")) == 1


def fit_to_cluster(roles: dict[str, tuple[DeploymentArgs, float]]) -> dict[str, tuple[DeploymentArgs, float]]:
    """``roles`` with max replica counts lowered to what the connected cluster places
    (``capacity.fit_replicas``; one ingress replica's CPUs kept free)."""
    import ray

    total = ray.cluster_resources()
    demands = [Demand(name, d, d.num_cpus, gpus) for name, (d, gpus) in roles.items()]
    highs = fit_replicas(demands, float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0)),
                         spare_cpus=roles[INGRESS][0].num_cpus)
    out = {}
    for name, (d, gpus) in roles.items():
        new = capped(d, highs[name])
        if new is not d:
            logger.info("%s: at most %d replicas (what this cluster can place)", name, highs[name])
        out[name] = (new, gpus)
    return out


def build_app(args: ServeArgs | dict) -> serve.Application:
    """The Serve application for one model, from typed args (a dict is validated first).

    Raises FileNotFoundError / ValueError (one line) for a model directory that cannot be served,
    e.g. an encoder whose output size differs from what the fusion weights expect."""
    args = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(args)
    card = read_model_config(args.model_dir)  # fail at deploy time, naming the path
    groups = encoder_groups(card)
    roles = deployment_roles(args, groups, card["modalities"])
    if _should_cap(args):
        roles = fit_to_cluster(roles)
    log = args.access_log
    encoders = {
        name: Encoders.options(name=name, **plan.options).bind(
            args.model_dir, plan.modalities, plan.step_atoms, plan.max_step_molecules, plan.together)
        for name, plan in plan_encoders(args, groups, roles).items()
    }
    fusion = None
    if args.separate_fusion:
        f, gpus = roles[FUSION]
        fusion = FusionModel.options(name=FUSION, **deployment_options(f, gpus, log)).bind(
            args.model_dir, "cuda" if gpus > 0 else "cpu", int(max(1, f.num_cpus)), f.max_batch_molecules,
            f.batch_wait_timeout_s)
    ingress, _ = roles[INGRESS]
    return Ingress.options(name=INGRESS, **deployment_options(ingress, 0.0, log)).bind(
        args.model_dump(), groups, encoders, fusion)
