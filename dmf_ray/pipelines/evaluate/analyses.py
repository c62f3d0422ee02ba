"""Figures 3-5: reconstruction cosine per modality, and attention per modality (all present,
and as present modalities are masked at increasing rates). Computed on the test molecules.

The reconstruction cosine is the one of :func:`dmf_ray.model.reconstruction_cosine` (the same
number the training log's validation and ``/v1/reconstruct`` report): primary in the model's
normalised space, raw space beside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from dmf_ray.pipelines.evaluate.taskdata import TaskData


def reconstruction(model, data: TaskData) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    """Per modality: hide it on the test molecules that have it and at least one other modality,
    reconstruct it from the fused vector of the others, compare with the true vector.

    Returns (normalised cosine, raw cosine, molecules used) per modality; a modality no test
    molecule could be used for is missing from the cosines (its count is 0).
    """
    from dmf_ray.inference import fuse
    from dmf_ray.model import mean_cosine, reconstruction_cosine

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
        out = fuse(model, replace(data.batch.subset(use), present=vis), with_reconstructions=True)
        cos = reconstruction_cosine(model, m, out.reconstructions[j], data.values[m][use])
        norm_cos[m], raw_cos[m] = mean_cosine(cos.normalized), mean_cosine(cos.raw)
    return norm_cos, raw_cos, counts


def attention(model, data: TaskData, rates: Sequence[float], seeds: Sequence[int]) -> tuple[dict, dict]:
    """Mean attention per modality on the test molecules (all their modalities visible), and the
    same with present modalities hidden at rate p (``sample_training_mask``), averaged over seeds.

    Returns ``({m: weight}, {rate: {m: weight}})``; both empty when no test molecule has a modality.
    """
    import torch

    from dmf_ray.inference import fuse
    from dmf_ray.model import sample_training_mask

    rows = data.split_of("test")
    test = data.batch.subset(rows)
    present = test.present
    has = present.any(axis=1)
    if not has.any():
        return {}, {}

    def mean_attention(vis: np.ndarray) -> np.ndarray:
        att = fuse(model, replace(test, present=vis)).attention
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
