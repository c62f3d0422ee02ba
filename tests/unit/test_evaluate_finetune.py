"""Fine-tuned fusion on a tiny real task: a row, its robustness, the valid-best epoch kept."""

from __future__ import annotations

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
    predictor, scale, _ = finetune(model, data, seed=0, settings=FinetuneSettings(epochs=2))
    test = data.split_of("test")
    keep = data.present.copy()
    keep[:, 0] = False
    for k in (None, keep):
        p = predict(predictor, data, test, "classification", scale, k)
        assert p.shape == (len(test), 1) and np.all((p >= 0) & (p <= 1))
