"""dmf_ray.model.metrics: the one reconstruction cosine, and that the training log, the server and
dmf evaluate report the same number for the same model and molecules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmf_ray.model import (DynamicFusion, FusionConfig, array_moments, mean_cosine, normalization_stats,
                           reconstruction_cosine, row_cosine)
from reconstruction_check import assert_training_log_matches_served

NAMES = ["a", "b", "c"]
DIMS = [6, 8, 5]


def _data(n: int = 300, seed: int = 0):
    """Partially paired raw data on very different scales, with one constant feature (std 0)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    values = {m: (z @ rng.normal(size=(3, d)) * 10.0 ** j + 50.0 * j).astype(np.float32)
              for j, (m, d) in enumerate(zip(NAMES, DIMS))}
    values["b"][:, 0] = 3.0
    present = rng.random((n, 3)) < 0.8
    present[~present.any(1), 0] = True
    return values, present


def _model(values, present) -> DynamicFusion:
    torch.manual_seed(0)
    model = DynamicFusion(FusionConfig(modalities=NAMES, dims=DIMS, latent_dim=8, gate_hidden=8,
                                       attention_hidden=8, decoder_hidden=16, dropout=0.3))
    model.set_normalization(normalization_stats(array_moments(values, present, NAMES)))
    return model


def test_row_cosine_is_float64_and_zero_where_a_row_has_no_direction():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [-1.0, -1.0], [1.0, 2.0]])
    cos = row_cosine(a, b)
    assert cos.dtype == torch.float64 and cos.tolist() == pytest.approx([1.0, -1.0, 0.0])
    assert math.isnan(mean_cosine(row_cosine(torch.zeros(0, 2), torch.zeros(0, 2))))


def test_normalised_and_raw_space_and_floor_features_left_out():
    values, present = _data()
    model = _model(values, present)
    mean, std = model.get_normalization()["a"]
    raw_target = values["a"][:4].astype(np.float64)
    # Predicting the training mean scores 0 in normalised space, but near 1 in raw space.
    guess = np.tile(mean, (4, 1)).astype(np.float64)
    cos = reconstruction_cosine(model, "a", guess, raw_target)
    assert np.allclose(cos.normalized.numpy(), 0.0, atol=1e-9)
    expected_raw = (guess * raw_target).sum(1) / np.linalg.norm(guess, axis=1) / np.linalg.norm(raw_target, axis=1)
    np.testing.assert_allclose(cos.raw.numpy(), expected_raw, rtol=1e-9)
    # Normalised inputs give the same answer as raw ones.
    rec = raw_target + np.random.default_rng(1).normal(size=raw_target.shape) * std
    via_norm = reconstruction_cosine(model, 0, torch.as_tensor((rec - mean) / std), torch.as_tensor((raw_target - mean) / std),
                                     normalized=True)
    via_raw = reconstruction_cosine(model, "a", rec, raw_target)
    np.testing.assert_allclose(via_norm.normalized.numpy(), via_raw.normalized.numpy(), rtol=1e-9)
    np.testing.assert_allclose(via_norm.raw.numpy(), via_raw.raw.numpy(), rtol=1e-9)
    # A feature whose std sits at the floor (a foreign model's statistics) does not decide the cosine.
    model.set_normalization({"a": (mean, np.r_[0.0, std[1:]])})
    spoiled = rec.copy()
    spoiled[:, 0] = mean[0] + 1.0  # 1e6 in normalised units
    np.testing.assert_allclose(reconstruction_cosine(model, "a", spoiled, raw_target).normalized.numpy(),
                               reconstruction_cosine(model, "a", rec, raw_target).normalized.numpy(), rtol=1e-9)
    with pytest.raises(ValueError, match="unknown modality 'x'"):
        reconstruction_cosine(model, "x", rec, raw_target)
    with pytest.raises(ValueError, match=r"\[N, 6\]"):
        reconstruction_cosine(model, "a", rec[:, :3], raw_target)


def test_training_log_server_and_evaluate_report_the_same_cosine():
    """validation_sums (the training log's val/cos/<m>) against the path the server's
    /v1/reconstruct and dmf evaluate's Figure 3 take: fuse the raw arrays with modality m marked
    absent (inference.fuse_arrays), reconstruct it in raw space, score with reconstruction_cosine."""
    values, present = _data()
    model = _model(values, present)
    model.train()  # validation_sums and fuse_arrays must both switch dropout off
    inputs = [torch.as_tensor(values[m]) for m in NAMES]
    assert_training_log_matches_served(model, inputs, values, present, NAMES)
