"""Figures 3-5 on a small model: Figure 3's cosine is the training log's validation cosine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmf_ray.modalities import ModalityBatch
from dmf_ray.model import DynamicFusion, FusionConfig, array_moments, normalization_stats
from dmf_ray.pipelines.evaluate.analyses import attention, reconstruction
from dmf_ray.pipelines.evaluate.taskdata import TaskData
from dmf_ray.pipelines.evaluate.tasks import Task
from dmf_ray.pipelines.train.step import validation_sums

NAMES = ["a", "b", "c"]
DIMS = [6, 8, 5]


def _setup(n: int = 240):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(n, 3))
    values = {m: (z @ rng.normal(size=(3, d)) * 10.0 ** j + 50.0 * j).astype(np.float32)
              for j, (m, d) in enumerate(zip(NAMES, DIMS))}
    values["b"][:, 0] = 3.0  # a constant feature: left out of the normalised cosine
    present = rng.random((n, 3)) < 0.8
    present[~present.any(1), 0] = True
    torch.manual_seed(0)
    model = DynamicFusion(FusionConfig(modalities=NAMES, dims=DIMS, latent_dim=8, gate_hidden=8,
                                       attention_hidden=8, decoder_hidden=16, dropout=0.3))
    model.set_normalization(normalization_stats(array_moments(values, present, NAMES)))
    task = Task("t", {s: [] for s in ("train", "valid", "test")}, {}, ["y"], "classification", "provided")
    batch = ModalityBatch([f"m{i}" for i in range(n)], NAMES, values, present)
    return model, TaskData(task, batch, {"train": slice(0, 0), "valid": slice(0, 0), "test": slice(0, n)})


def test_figure3_is_the_training_logs_validation_cosine():
    model, data = _setup()
    model.train()  # both paths must switch dropout off themselves
    norm, raw, counts = reconstruction(model, data)
    sums = validation_sums(model, [torch.as_tensor(data.values[m]) for m in NAMES], torch.as_tensor(data.present))
    for j, m in enumerate(NAMES):
        assert counts[m] == float(sums["cos_n"][j])
        assert norm[m] == pytest.approx(float(sums["cos"][j]) / counts[m], abs=1e-6)
        assert -1.0 <= raw[m] <= 1.0


def test_attention_sums_to_one_and_moves_with_the_mask_rate():
    model, data = _setup()
    full, by_rate = attention(model, data, [0.0, 0.5], seeds=[0, 1])
    assert sum(full.values()) == pytest.approx(1.0, abs=1e-5)
    assert by_rate[0.0] == pytest.approx(full, abs=1e-6)  # rate 0 hides nothing
    assert sum(by_rate[0.5].values()) == pytest.approx(1.0, abs=1e-5)
