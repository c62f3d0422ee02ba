"""Fine-tuned fusion on a tiny real task: a row, its robustness, the valid-best epoch kept."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from dmf_ray.pipelines.evaluate.config import EvaluateConfig
from dmf_ray.pipelines.evaluate.features import featurize_smiles
from dmf_ray.pipelines.evaluate.finetune import FINETUNED, FinetuneSettings, finetune, predict, run_finetune
from dmf_ray.pipelines.evaluate.protocol import removal_patterns
from dmf_ray.pipelines.evaluate.results import TaskResult
from dmf_ray.pipelines.evaluate.table import TaskRun
from dmf_ray.pipelines.evaluate.taskdata import task_data
from dmf_ray.pipelines.evaluate.tasks import load_task


@pytest.fixture(scope="module")
def tiny(shared_data, tmp_path_factory):
    import pandas as pd

    from dmf_ray.artifact import load_fusion_model
    from dmf_ray.testing import save_random_model

    root = tmp_path_factory.mktemp("finetune")
    for split, n in (("train", 120), ("valid", 40), ("test", 40)):
        pd.read_csv(shared_data / "moleculenet" / "bbbp" / f"{split}.csv").head(n).to_csv(root / f"{split}.csv",
                                                                                         index=False)
    task = load_task(str(root), name="bbbp")
    smiles = [s for split in ("train", "valid", "test") for s in task.smiles[split]]
    good = [s for s, ok in zip(task.smiles["train"], task.smiles_ok["train"]) if ok]
    model_dir = save_random_model(root / "model", good[:100], ["ecfp", "maccs"], latent_dim=16)
    model, card = load_fusion_model(model_dir)
    feats = featurize_smiles(smiles, card["modalities"], workers=1, log=lambda m: None)
    return model, task_data(task, feats)


def test_finetuned_row_and_its_robustness(tiny):
    model, data = tiny
    cfg = EvaluateConfig(model="m", tasks=["bbbp=x"], out="o", seeds=1)
    run = TaskRun(data, model, cfg, [0], TaskResult(task="bbbp", metric="roc_auc", split="provided"),
                  removal_patterns(data.modalities), lambda m: None)
    before = [p.detach().clone() for p in model.parameters()]
    run_finetune(run, FinetuneSettings(epochs=3, patience=2))
    assert all(np.array_equal(a, b.detach()) for a, b in zip(before, model.parameters()))  # a copy is tuned
    r = run.result
    assert 0.0 <= r.rows[FINETUNED][0] <= 1.0 and r.learners[FINETUNED] == ["finetune"]
    assert set(r.robustness) == {"-ecfp", "-maccs", "random25"}
    assert all(math.isfinite(v["finetuned"][0]) for v in r.robustness.values())
    assert 1 <= r.params[FINETUNED][0]["epoch_kept"] <= 3


def test_predictions_are_probabilities_even_with_a_modality_withheld(tiny):
    model, data = tiny
    predictor, _ = finetune(model, data, seed=0, settings=FinetuneSettings(epochs=2))
    test = data.split_of("test")
    keep = data.present.copy()
    keep[:, 0] = False
    for k in (None, keep):
        p = predict(predictor, data, test, "classification", k)
        assert p.shape == (len(test), 1) and np.all((p >= 0) & (p <= 1))


def _with_labels(data, kind: str, columns: dict[str, dict[str, np.ndarray]], skipped=None):
    """``data`` with other label columns (name -> split -> [n] values)."""
    names = list(columns)
    labels = {s: np.column_stack([columns[c][s] for c in names]) for s in ("train", "valid", "test")}
    task = dataclasses.replace(data.task, labels=labels, label_names=names, kind=kind,
                               skipped_labels=skipped or {})
    return dataclasses.replace(data, task=task)


def test_regression_targets_are_standardised_per_column(tiny):
    # Review #9: one scalar over [n, T] let the widest target dominate the squared error.
    model, data = tiny
    rng = np.random.default_rng(0)
    sizes = {s: len(data.labels[s]) for s in ("train", "valid", "test")}
    small = {s: rng.normal(1.0, 0.5, n) for s, n in sizes.items()}
    wide = {s: rng.normal(-3000.0, 800.0, n) for s, n in sizes.items()}
    small["train"][:5] = np.nan  # a missing label does not enter its column's statistics
    two = _with_labels(data, "regression", {"small": small, "wide": wide})
    predictor, _ = finetune(model, two, seed=0, settings=FinetuneSettings(epochs=2))
    np.testing.assert_allclose(predictor.mean, [np.nanmean(small["train"]), np.mean(wide["train"])])
    np.testing.assert_allclose(predictor.std, [np.nanstd(small["train"]), np.std(wide["train"])])
    out = predict(predictor, two, two.split_of("test"), "regression")
    assert out.shape == (sizes["test"], 2) and np.isfinite(out).all()
    # Each column comes back in its own units (a linear head on a random model stays near the mean).
    assert abs(np.mean(out[:, 0]) - 1.0) < 3 * 0.5 and abs(np.mean(out[:, 1]) + 3000.0) < 3 * 800.0


def test_a_column_the_task_skips_is_not_trained_and_predicted_nan(tiny):
    # Review #2: the fine-tuned row skips an unfittable label column as the Table 1 learners do.
    model, data = tiny
    y = data.labels
    zeros = {s: np.zeros(len(y[s])) for s in ("train", "valid", "test")}
    zeros["test"][:3] = 1.0
    two = _with_labels(data, "classification", {"p_np": {s: y[s][:, 0] for s in y}, "b": zeros},
                       skipped={"b": "only class 0 in train"})
    predictor, _ = finetune(model, two, seed=0, settings=FinetuneSettings(epochs=2))
    out = predict(predictor, two, two.split_of("test"), "classification")
    assert np.isnan(out[:, 1]).all() and np.isfinite(out[:, 0]).all()
