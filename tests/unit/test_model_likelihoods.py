"""dmf_ray.model.likelihoods: the reconstruction loss of each value kind (Bernoulli for bits,
Poisson for counts, squared error for the rest), how fusion_losses uses it, the cosine of such
models, old model directories (squared error), and the value kinds the encoders declare."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmf_ray.artifact import load_fusion_model, save_fusion_model
from dmf_ray.encoders.base import VALUE_KINDS as ENCODER_VALUE_KINDS
from dmf_ray.encoders.base import EncoderSpec, create_encoder, value_kind_of
from dmf_ray.inference import fuse_arrays
from dmf_ray.model import VALUE_KINDS, DynamicFusion, FusionConfig, array_moments, fusion_losses, normalization_stats
from dmf_ray.model.likelihoods import baseline, element_loss, mean_output, to_raw
from reconstruction_check import assert_training_log_matches_served

NAMES = ["bits", "counts", "desc"]
DIMS = [12, 10, 4]
KINDS = ["binary", "count", "continuous"]


def _data(n: int = 200, seed: int = 0):
    """Bits, counts and continuous values that share three latent factors; partially paired."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    logits = z @ rng.normal(size=(3, DIMS[0])) - 1.0
    rates = np.exp(z @ rng.normal(size=(3, DIMS[1])) * 0.5 - 1.0)
    values = {
        "bits": (rng.random((n, DIMS[0])) < 1 / (1 + np.exp(-logits))).astype(np.uint8),
        "counts": rng.poisson(rates).astype(np.uint8),
        "desc": (z @ rng.normal(size=(3, DIMS[2])) * 10 + 5).astype(np.float32),
    }
    present = rng.random((n, 3)) < 0.85
    present[~present.any(1), 2] = True
    return values, present


def _model(values, present, reconstruction="auto", kinds=KINDS, seed=0) -> DynamicFusion:
    torch.manual_seed(seed)
    config = FusionConfig(modalities=NAMES, dims=DIMS, latent_dim=8, gate_hidden=8, attention_hidden=8,
                          decoder_hidden=16, dropout=0.0, value_kinds=kinds, reconstruction=reconstruction)
    model = DynamicFusion(config)
    model.set_normalization(normalization_stats(array_moments(values, present, NAMES)))
    return model


def _inputs(values):
    return [torch.as_tensor(values[m].astype(np.float32)) for m in NAMES]


def test_each_kind_is_torchs_own_loss():
    out = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.5]])
    bits = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    counts = torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 7.0]])
    assert element_loss("binary", out, bits).mean() == pytest.approx(
        F.binary_cross_entropy_with_logits(out, bits).item(), rel=1e-6)
    saturated = counts - torch.special.xlogy(counts, counts)  # torch's loss at the perfect log-rate
    assert element_loss("count", out, counts).mean() == pytest.approx(
        (F.poisson_nll_loss(out, counts, log_input=True, full=False) - saturated.mean()).item(), rel=1e-6)
    assert element_loss("continuous", out, counts).mean() == pytest.approx(F.mse_loss(out, counts).item(), rel=1e-6)
    # 0 for a perfect reconstruction, as the squared error is.
    perfect = torch.where(counts > 0, counts.log(), -30.0)
    assert element_loss("count", perfect, counts).abs().max() < 1e-5
    with pytest.raises(ValueError, match="unknown value kind 'ordinal'"):
        element_loss("ordinal", out, bits)


def test_outputs_in_the_modalitys_units_and_the_mean_predictor():
    out, mean, std = torch.tensor([[0.0, 2.0]]), torch.tensor([0.25, 3.0]), torch.tensor([2.0, 0.5])
    assert torch.allclose(to_raw("binary", out, mean, std), torch.sigmoid(out))
    assert torch.allclose(to_raw("count", out, mean, std), torch.exp(out))
    assert torch.allclose(to_raw("continuous", out, mean, std), out * std + mean)
    p = torch.tensor([0.25, 0.9])
    assert torch.allclose(to_raw("binary", mean_output("binary", p), p, std), p)
    assert torch.allclose(to_raw("count", mean_output("count", mean), mean, std), mean)
    assert mean_output("continuous", mean) is None


def test_baseline_is_the_loss_of_predicting_the_mean():
    p = torch.tensor([0.5, 0.1, 0.0])
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).nan_to_num(0.0)
    assert baseline("binary", p) == pytest.approx(float(entropy.mean()), rel=1e-6)
    # Counts: against a Monte Carlo of Poisson(mu) data scored with the constant log-rate log(mu).
    mu = torch.tensor([0.03, 0.8, 4.0], dtype=torch.float64)
    draws = torch.poisson(mu.expand(200_000, 3), generator=torch.Generator().manual_seed(0))
    mc = element_loss("count", mu.log().expand_as(draws), draws).mean()
    assert baseline("count", mu) == pytest.approx(float(mc), rel=0.01)
    assert baseline("continuous", mu) == 1.0 and baseline("binary", torch.zeros(3)) == 1.0


def test_reconstruction_term_per_kind_by_hand():
    values, present = _data()
    model = _model(values, present)
    masked = torch.zeros(len(present), 3, dtype=torch.bool)
    masked[:50] = torch.as_tensor(present[:50])
    masked[:50, 2] = False  # keep something visible
    present_t = torch.as_tensor(present)
    out = model(_inputs(values), present_t, masked)
    hidden = present_t & masked
    per = []
    for j, kind in enumerate(KINDS):
        target = out.normalized_inputs[j] if kind == "continuous" else torch.as_tensor(values[NAMES[j]]).float()
        err = element_loss(kind, out.reconstructions[j], target).mean(-1)
        scale = baseline(kind, model.normalizers[j].mean)
        per.append(err / scale)
    expected = torch.stack(per, 1)[hidden].sum() / hidden.sum()
    assert fusion_losses(model.config, out)["reconstruction"].item() == pytest.approx(expected.item(), rel=1e-5)
    # A hand-made FusionOutput without raw targets cannot score bits or counts.
    out.targets = None
    with pytest.raises(ValueError, match="binary and count modalities need"):
        fusion_losses(model.config, out)


def test_auto_with_continuous_modalities_is_mse_exactly():
    values, present = _data()
    values = {m: v.astype(np.float32) for m, v in values.items()}
    masked = torch.as_tensor(np.random.default_rng(3).random(present.shape) < 0.4) & torch.as_tensor(present)
    results = []
    for reconstruction, kinds in (("mse", None), ("auto", None), ("auto", ["continuous"] * 3), ("mse", KINDS)):
        model = _model(values, present, reconstruction, kinds)
        assert model.config.reconstruction_kinds == ["continuous"] * 3
        results.append(fusion_losses(model.config, model(_inputs(values), torch.as_tensor(present), masked)))
    for other in results[1:]:
        assert all(torch.equal(results[0][k], other[k]) for k in results[0])


def test_a_model_directory_written_before_the_setting_loads_as_mse(tmp_path):
    values, present = _data()
    model = _model(values, present, "auto", None)
    save_fusion_model(tmp_path / "old", model)
    doc = json.loads((tmp_path / "old" / "config.json").read_text())
    del doc["fusion"]["reconstruction"], doc["fusion"]["value_kinds"]  # what older versions wrote
    (tmp_path / "old" / "config.json").write_text(json.dumps(doc))
    old, _ = load_fusion_model(tmp_path / "old")
    assert old.config.reconstruction == "mse" and old.config.reconstruction_kinds == ["continuous"] * 3
    outputs = [torch.randn(5, d) for d in DIMS]
    assert all(torch.equal(a, b) for a, b in zip(old.reconstruction_values(outputs), old.denormalize(outputs)))
    # A new model keeps its kinds and setting through the directory.
    model = _model(values, present)
    save_fusion_model(tmp_path / "new", model)
    new, _ = load_fusion_model(tmp_path / "new")
    assert new.config.reconstruction == "auto" and new.config.reconstruction_kinds == KINDS
    assert torch.equal(new.reconstruction_scales(), model.reconstruction_scales())
    # The cached divisors follow the statistics.
    before = new.reconstruction_scales().clone()
    new.set_normalization({"bits": (np.full(DIMS[0], 0.5), np.full(DIMS[0], 0.5))})
    assert new.reconstruction_scales()[0] == pytest.approx(np.log(2)) and torch.equal(new.reconstruction_scales()[1:], before[1:])
    with pytest.raises(ValueError, match="value_kinds has 2 entries but modalities has 3"):
        FusionConfig(modalities=NAMES, dims=DIMS, value_kinds=KINDS[:2])


def test_decoders_start_at_the_mean_and_raw_reconstructions_are_expected_values():
    values, present = _data()
    model = _model(values, present)
    mean_bits = torch.as_tensor(values["bits"][present[:, 0]].mean(0), dtype=torch.float32)
    assert torch.allclose(torch.sigmoid(model.decoders[0][-1].bias), mean_bits.clamp(1e-4, 1 - 1e-4), atol=1e-6)
    out = fuse_arrays(model, values, present, with_reconstructions=True)
    assert 0 <= out.reconstructions[0].min() and out.reconstructions[0].max() <= 1  # probabilities
    assert out.reconstructions[1].min() > 0  # expected counts


def test_training_log_server_and_evaluate_agree_for_bits_and_counts():
    """The check of test_model_metrics for a model that reconstructs with logits and log-rates."""
    values, present = _data()
    model = _model(values, present)
    assert_training_log_matches_served(model, _inputs(values), values, present, NAMES)


def test_encoders_declare_their_value_kind():
    assert ENCODER_VALUE_KINDS == VALUE_KINDS
    assert create_encoder("ecfp").encoder_spec().value_kind == "count"
    assert create_encoder("maccs").spec()["value_kind"] == "binary"
    assert create_encoder("rdkit2d").encoder_spec().value_kind == "continuous"
    # A store written before the field: the installed encoder's kind, if it is the same version.
    old = {k: v for k, v in create_encoder("ecfp").spec().items() if k != "value_kind"}
    assert EncoderSpec.parse(old).value_kind is None and value_kind_of(old) == "count"
    assert value_kind_of({**old, "version": "0"}) == "continuous"
    assert value_kind_of({**old, "encoder": "someone-elses-plugin"}) == "continuous"
    assert value_kind_of({**old, "value_kind": "binary"}) == "binary"
    with pytest.raises(ValueError, match="value_kind"):
        EncoderSpec.parse({**old, "value_kind": "ordinal"})
