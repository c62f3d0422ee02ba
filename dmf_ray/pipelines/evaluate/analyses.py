"""Figures 3-5: reconstruction cosine per modality, and attention per modality (all present,
and as present modalities are masked at increasing rates). Computed on the test molecules.

Reconstruction space: cosine in the model's normalised space (each feature standardised with
the training statistics stored in the model, the space the reconstruction loss is minimised
in): predicting the mean scores 0 there. In raw space every count fingerprint is non-negative
and the descriptor vector is dominated by its largest-scale features, so even the training-set
mean scores ~0.7-0.99; raw-space cosines are reported beside as a secondary figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dmf_ray.pipelines.evaluate.taskdata import TaskData


def _normalised_cosine(model, j: int, recon: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Mean row cosine in the model's normalised space (features with std at the floor left out:
    dividing by the floor turns any deviation into ~1e6) and in raw space."""
    mean, std = model.get_normalization()[model.config.modalities[j]]
    floor = model.config.std_floor
    informative = std > floor * 1.0001
    a = (recon.astype(np.float64) - mean) / np.maximum(std, floor)
    b = (target.astype(np.float64) - mean) / np.maximum(std, floor)
    return row_cosine(a[:, informative], b[:, informative]), row_cosine(recon, target)


def row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine between matching rows of ``a`` and ``b`` (``[N, d]``); 0 for a zero row, NaN for N = 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(1)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return float(cos.mean()) if cos.size else float("nan")


def reconstruction(model, data: TaskData) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    """Per modality: hide it on the test molecules that have it and at least one other modality,
    reconstruct it from the fused vector of the others, compare with the true vector.

    Returns (normalised cosine, raw cosine, molecules used) per modality; a modality no test
    molecule could be used for is missing from the cosines (its count is 0).
    """
    from dmf_ray.inference import fuse_arrays

    rows = data.split_of("test")
    present = data.present[rows]
    norm_cos, raw_cos, counts = {}, {}, {}
    for j, m in enumerate(data.modalities):
        others = np.delete(present, j, axis=1).any(axis=1)
        use = rows[present[:, j] & others]
        counts[m] = int(use.size)
        if use.size == 0:
            continue
        vis = data.present[use].copy()
        vis[:, j] = False
        out = fuse_arrays(model, {x: data.values[x][use] for x in data.modalities}, vis, with_reconstructions=True)
        norm_cos[m], raw_cos[m] = _normalised_cosine(model, j, out.reconstructions[j], data.values[m][use])
    return norm_cos, raw_cos, counts


def attention(model, data: TaskData, rates: Sequence[float], seeds: Sequence[int]) -> tuple[dict, dict]:
    """Mean attention per modality on the test molecules (all their modalities visible), and the
    same with present modalities hidden at rate p (``sample_training_mask``), averaged over seeds.

    Returns ``({m: weight}, {rate: {m: weight}})``; both empty when no test molecule has a modality.
    """
    import torch

    from dmf_ray.inference import fuse_arrays
    from dmf_ray.model import sample_training_mask

    rows = data.split_of("test")
    present = data.present[rows]
    has = present.any(axis=1)
    values = {m: data.values[m][rows] for m in data.modalities}
    if not has.any():
        return {}, {}

    def mean_attention(vis: np.ndarray) -> np.ndarray:
        att = fuse_arrays(model, values, vis).attention
        return att[has].mean(axis=0)

    full = mean_attention(present)
    by_rate = {}
    for p in rates:
        acc = np.zeros(len(data.modalities))
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            masked = sample_training_mask(torch.from_numpy(present), float(p), generator=gen).numpy()
            acc += mean_attention(present & ~masked)
        by_rate[float(p)] = {m: float(v) for m, v in zip(data.modalities, acc / len(seeds))}
    return {m: float(v) for m, v in zip(data.modalities, full)}, by_rate
