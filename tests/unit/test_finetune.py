"""dmf_ray.pipelines.finetune on a real MoleculeNet task (bbbp from the shared data, a slice of it)
and a small random-weights fusion model over real RDKit encoders: no Ray (in-process torch)."""

from __future__ import annotations

import numpy as np
import pytest

from dmf_ray.pipelines.evaluate.tasks import load_task
from dmf_ray.pipelines.finetune import FinetuneConfig, Predictor, finetune, load_finetuned, robustness
from dmf_ray.testing import save_random_model

NAMES = ["maccs", "rdkit2d", "ecfp"]


@pytest.fixture(scope="module")
def task(shared_data):
    full = load_task(shared_data / "moleculenet" / "bbbp")
    # A slice keeps the test to seconds; bbbp is ~76% positive, so ROC-AUC is the fair measure.
    keep = {"train": 400, "valid": 120, "test": 120}
    for split, n in keep.items():
        full.smiles[split] = full.smiles[split][:n]
        full.labels[split] = full.labels[split][:n]
    return full


@pytest.fixture(scope="module")
def tuned(task, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    from dmf_ray.molecules import InvalidSmilesError, iter_parsed

    valid = [s for s, m in zip(task.smiles["train"], iter_parsed(task.smiles["train"])) if not isinstance(m, InvalidSmilesError)]
    pretrained = save_random_model(root / "pretrained", valid[:200], NAMES, latent_dim=32,
                                   gate_hidden=32, attention_hidden=16, decoder_hidden=32)
    config = FinetuneConfig(model=pretrained, task="bbbp", out=str(root / "out"), epochs=8, patience=4, seed=0)
    return finetune(config, task, log=lambda m: None), task


def test_finetune_beats_chance_and_keeps_the_best_epoch(tuned):
    result, _ = tuned
    assert result.test_auc is not None and result.test_auc > 0.7, result
    assert result.valid_auc == max(h["valid_auc"] for h in result.history)
    model, card = load_finetuned(result.model_dir)
    assert card["finetune"]["label_names"] == ["p_np"] and card["finetune"]["best_epoch"] == result.best_epoch


def test_predicts_with_modalities_withheld_and_bad_smiles(tuned):
    result, task = tuned
    predictor = Predictor(result.model_dir)
    smiles = task.smiles["test"][:20] + ["not-a-smiles"]
    full = predictor.predict(smiles)
    without = predictor.predict(smiles, withhold=["ecfp", "rdkit2d"])
    assert full.shape == (21, 1) and np.isnan(full[-1]).all() and np.isfinite(full[:-1]).all()
    assert np.isfinite(without[:-1]).all() and not np.allclose(full[:-1], without[:-1])
    with pytest.raises(ValueError, match="unknown modality 'smiles'"):
        predictor.predict(smiles, withhold=["smiles"])


def test_robustness_with_one_and_two_withheld(tuned):
    result, task = tuned
    figures = robustness(result.model_dir, task)
    assert set(figures["mean"]) == {"0", "1", "2"}
    assert abs(figures["mean"]["0"] - result.test_auc) < 1e-9
    assert set(figures["by_subset"]) >= {"-", "ecfp", "maccs+rdkit2d"}
    # Trained with masking on, the predictor stays well above chance with two of three withheld.
    assert figures["mean"]["2"] > 0.6, figures


def test_a_label_column_the_task_skips_is_neither_trained_nor_scored(task, tmp_path):
    # Review #2: load_task keeps a one-class column (listed in skipped_labels) instead of refusing.
    import dataclasses

    from dmf_ray.pipelines.finetune import roc_auc

    b = {s: np.zeros(len(task.labels[s])) for s in ("train", "valid", "test")}
    for s in ("valid", "test"):
        b[s][::3] = 1.0  # both classes where it would be scored
    two = dataclasses.replace(task, labels={s: np.column_stack([task.labels[s][:, 0], b[s]]) for s in b},
                              label_names=["p_np", "b"], skipped_labels={"b": "only class 0 in train"})
    from dmf_ray.molecules import InvalidSmilesError, iter_parsed

    valid = [s for s, m in zip(task.smiles["train"][:80], iter_parsed(task.smiles["train"][:80]))
             if not isinstance(m, InvalidSmilesError)]
    pretrained = save_random_model(tmp_path / "pretrained", valid, ["maccs"], latent_dim=8)
    lines: list[str] = []
    result = finetune(FinetuneConfig(model=pretrained, task="two", out=str(tmp_path / "out"), epochs=1, seed=0),
                      two, log=lines.append)
    probabilities = Predictor(result.model_dir).predict(two.smiles["test"])
    assert result.test_auc == pytest.approx(roc_auc(two.labels["test"][:, :1], probabilities[:, :1]))
    assert result.test_auc != pytest.approx(roc_auc(two.labels["test"], probabilities))
    assert any("label b skipped: only class 0 in train" in line for line in lines)
    assert load_finetuned(result.model_dir)[1]["finetune"]["skipped_labels"] == {"b": "only class 0 in train"}
