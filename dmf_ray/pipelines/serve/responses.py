"""Pieces of the answers: the model card (GET /v1/model), a hidden modality's item in
/v1/reconstruct, and the Server-Timing header."""

from __future__ import annotations

import time

import numpy as np

from dmf_ray import __version__
from dmf_ray.pipelines.serve.args import ServeArgs

FUSION = "FusionModel"
INGRESS = "Ingress"


def hidden_item(reconstruction: np.ndarray, scores: dict[str, np.ndarray], k: int, error: str | None) -> dict:
    """One hidden modality of molecule k; no cosine where its true value could not be computed."""
    def number(x: float) -> float | None:
        return None if error is not None or not np.isfinite(x) else float(x)

    return {"reconstruction": reconstruction, "cosine": number(scores["cosine"][k]),
            "cosine_standardized": number(scores["cosine_standardized"][k]),
            "error": None if error is None else f"true value unavailable: {error}"}


def describe_model(card: dict, args: ServeArgs, groups: dict[str, list[str]]) -> dict:
    """GET /v1/model: what config.json says about the model, plus how this service runs it."""
    import ray

    from dmf_ray import files

    fusion = card["fusion"]
    modalities = list(fusion["modalities"])
    specs = card.get("modalities", {})
    return {
        "model_dir": files.redact(args.model_dir),
        "modalities": modalities,
        "dims": dict(zip(modalities, fusion["dims"])),
        "latent_dim": fusion.get("latent_dim"),
        "encoders": {m: specs.get(m, {}) for m in modalities},
        "versions": card.get("versions", {}),
        "training": card.get("training", {}),
        "metrics": card.get("metrics", {}),
        "fusion": fusion,
        "format_version": card.get("format_version"),
        "weights_sha256": card.get("weights_sha256"),
        "service": {
            "dmf_ray": __version__,
            "ray": ray.__version__,
            "encoder_deployments": groups,
            "fusion_deployment": FUSION if args.separate_fusion else INGRESS,
            "limits": {
                "max_smiles_per_request": args.max_smiles_per_request,
                "max_smiles_length": args.max_smiles_length,
                "max_heavy_atoms": args.max_heavy_atoms,
                "request_timeout_s": args.request_timeout_s,
            },
        },
    }


class Clock:
    """Per-step wall time of a request, sent as a Server-Timing header (ms) so a client can
    see where the time went without server logs."""

    def __init__(self):
        self.last = time.perf_counter()
        self.laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self.last))
        self.last = now

    def header(self) -> str:
        return ", ".join(f"{name};dur={sec * 1e3:.2f}" for name, sec in self.laps)
