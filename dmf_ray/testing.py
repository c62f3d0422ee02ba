"""A fusion model with random weights, normalised on real molecules so its inputs and outputs are
in a sane range: for benchmarks whose timings do not depend on what the weights learned, and for
tests of serving and embedding that need a model but not a trained one."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def save_random_model(directory: str | os.PathLike, smiles: list[str], modalities: list[str], seed: int = 0,
                      card: dict[str, Any] | None = None, **fusion_settings: Any) -> str:
    """Write a random-weights model over ``modalities`` (built-in or registered encoder names),
    normalised on ``smiles``; ``fusion_settings`` go to FusionConfig (latent_dim, ...)."""
    import torch

    from dmf_ray.artifact import save_fusion_model
    from dmf_ray.encoders import create_encoder
    from dmf_ray.model.fusion import DynamicFusion, FusionConfig
    from dmf_ray.model.normalization import Moments, normalization_stats
    from dmf_ray.molecules import parse_smiles

    torch.manual_seed(seed)
    encoders = {m: create_encoder(m) for m in modalities}
    model = DynamicFusion(FusionConfig(modalities=list(modalities), dims=[e.dim for e in encoders.values()],
                                       **fusion_settings))
    molecules = [parse_smiles(s) for s in smiles]
    moments = {}
    for m, encoder in encoders.items():
        batch = encoder.encode(molecules)
        ok = np.array([e is None for e in batch.errors])
        moments[m] = Moments.of(batch.values[ok])
    model.set_normalization(normalization_stats(moments))  # the statistics dmf train computes
    base = {"modalities": {m: e.spec() for m, e in encoders.items()},
            "training": {"epochs": 0, "note": "random weights (dmf_ray.testing)"}, "metrics": {}, "versions": {}}
    save_fusion_model(directory, model, {**base, **(card or {})})
    return str(directory)
