"""dmf_ray.model.finetune, the one fine-tuning core: a tiny fusion + head on synthetic labels that
depend on one modality; NaN labels skipped, the valid-best epoch loaded back, withholding works."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmf_ray.modalities import ModalityBatch
from dmf_ray.model import DynamicFusion, FusionConfig
from dmf_ray.model.finetune import FinetunedModel, Head, fit_finetuned, make_optimizer, masked_epoch, predict_logits


def _data(n: int, seed: int) -> tuple[ModalityBatch, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32)
    y = np.stack([(a[:, 0] > 0), (a[:, 1] + b[:, 0] > 0)], axis=1).astype(np.float64)
    present = np.ones((n, 2), bool)
    present[: n // 10, 1] = False  # some molecules lack a modality
    return ModalityBatch(np.arange(n), ["a", "b"], {"a": a, "b": b}, present), y


def _model(hidden: int) -> FinetunedModel:
    torch.manual_seed(0)
    fusion = DynamicFusion(FusionConfig(modalities=["a", "b"], dims=[4, 3], latent_dim=8, gate_hidden=8,
                                        attention_hidden=8, decoder_hidden=8, dropout=0.0))
    return FinetunedModel(fusion, Head(8, hidden, 2, dropout=0.0))


def _accuracy(model: FinetunedModel, batch: ModalityBatch, y: np.ndarray) -> float:
    return float(((predict_logits(model, batch) > 0) == (y > 0.5)).mean())


@pytest.mark.parametrize("hidden", [0, 16])
def test_fit_learns_and_keeps_the_valid_best_epoch(hidden):
    (train, y), (valid, y_valid) = _data(400, 1), _data(200, 2)
    y[::3, 1] = np.nan  # missing labels are skipped, not learned as anything
    model = _model(hidden)
    seen: list[tuple[int, float, dict]] = []

    def score(m: FinetunedModel) -> float:
        s = _accuracy(m, valid, y_valid)
        seen.append((len(seen) + 1, s, {k: v.clone() for k, v in m.state_dict().items()}))
        return s

    fit = fit_finetuned(model, make_optimizer(model, 1e-2, 0.0), train, y, score, epochs=8, patience=8,
                        batch_size=32, mask_p=0.3, generator=torch.Generator().manual_seed(0))
    assert fit.epochs_run == 8 and len(fit.history) == 8
    best = max(seen, key=lambda s: s[1])  # the first best epoch
    assert (fit.best_epoch, fit.best_score) == (best[0], best[1]) and fit.best_score > 0.75
    assert all(torch.equal(v, best[2][k]) for k, v in model.state_dict().items())  # loaded back
    assert all(np.isfinite(h["train_loss"]) for h in fit.history)


def test_patience_stops_and_lower_is_better_is_honoured():
    train, y = _data(100, 3)
    model = _model(0)
    scores = iter([0.5, 0.4, 0.45, 0.6, 0.7, 0.8])  # a loss: epoch 2 is best, then none better
    fit = fit_finetuned(model, make_optimizer(model, 1e-3, 0.0), train, y, lambda m: next(scores), epochs=6,
                        patience=2, batch_size=50, mask_p=0.0, generator=torch.Generator().manual_seed(0),
                        better=lambda a, b: a < b)
    assert (fit.best_epoch, fit.best_score, fit.epochs_run) == (2, 0.4, 4)


def test_undefined_scores_keep_the_last_epoch_and_frozen_fusion_stays():
    train, y = _data(60, 4)
    model = _model(0)
    before = [p.detach().clone() for p in model.fusion.parameters()]
    fit = fit_finetuned(model, make_optimizer(model, 1e-2, 0.0, fusion_lr=0.0), train, y,
                        lambda m: float("nan"), epochs=2, patience=1, batch_size=16, mask_p=0.5,
                        generator=torch.Generator().manual_seed(0))
    assert (fit.best_epoch, fit.best_score, fit.epochs_run) == (2, None, 2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.fusion.parameters()))


def test_predictions_with_a_modality_withheld_and_bad_loss():
    batch, y = _data(50, 5)
    model = _model(16)
    withheld = batch.present.copy()
    withheld[:, 0] = False
    full, without = predict_logits(model, batch), predict_logits(model, batch, withheld)
    assert full.shape == without.shape == (50, 2) and full.dtype == np.float64 and np.isfinite(without).all()
    assert not np.allclose(full, without)
    assert np.allclose(predict_logits(model, batch.withhold(["a"])), without)
    with pytest.raises(ValueError, match="loss must be one of"):
        masked_epoch(model, make_optimizer(model, 1e-3, 0.0), batch, y, batch_size=8, mask_p=0.0,
                     generator=torch.Generator(), loss="hinge")
