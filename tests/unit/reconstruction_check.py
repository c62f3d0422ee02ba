"""One check shared by the reconstruction-cosine tests: the training log and the serving path
report the same number for a model (whatever its reconstruction likelihood)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmf_ray.inference import fuse_arrays
from dmf_ray.model import mean_cosine, reconstruction_cosine
from dmf_ray.pipelines.train.step import validation_sums


def assert_training_log_matches_served(model, inputs: list[torch.Tensor], values: dict[str, np.ndarray],
                                       present: np.ndarray, names: list[str]) -> None:
    """validation_sums (the training log's val/cos/<m>, on ``inputs``) against the path the
    server's /v1/reconstruct and dmf evaluate's Figure 3 take: fuse the raw ``values`` with
    modality m marked absent (inference.fuse_arrays), reconstruct it, score it with
    reconstruction_cosine; for every modality, over the rows that have m and another one."""
    sums = validation_sums(model, inputs, torch.as_tensor(present))
    for j, m in enumerate(names):
        rows = np.flatnonzero(present[:, j] & (np.delete(present, j, axis=1).any(1)))
        visible = present[rows].copy()
        visible[:, j] = False
        out = fuse_arrays(model, {x: values[x][rows] for x in names}, visible, with_reconstructions=True)
        served = reconstruction_cosine(model, m, out.reconstructions[j], values[m][rows])
        assert float(sums["cos_n"][j]) == len(rows)
        assert float(sums["cos"][j]) / len(rows) == pytest.approx(mean_cosine(served.normalized), abs=1e-6)
