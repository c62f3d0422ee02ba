"""The downstream objective of ``dmf tune --task`` without Ray: the config's metric follows the
tasks, tasks are checked before Ray starts, the test split is never encoded, and the score is the
one ``dmf evaluate`` computes (its logreg learner's valid ROC-AUC on the same fused vectors)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dmf_ray.cli.tune import entries
from dmf_ray.pipelines.tune import (DOWNSTREAM_METRIC, TuneConfig, check_tune, objective_scores,
                                    prepare_objective)

TRAINING, TASKS = entries()
SMILES = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "c1ccncc1", "CCOC", "OCCO", "CC(C)O", "c1ccc(O)cc1",
          "CCCl", "CCBr", "NCCN", "CC=O", "C1CCCCC1", "c1ccc(N)cc1", "OC(=O)CCC", "CN(C)C", "CCS", "COC(C)=O"]


def _write_task(folder, labels=None, regression=False):
    """A task folder with 20 rows per split; train/valid/test hold different molecules."""
    folder.mkdir(parents=True)
    for k, split in enumerate(("train", "valid", "test")):
        rows = []
        for i, s in enumerate(SMILES):
            smiles = s + "C" * (k + 1)  # each split its own molecules
            label = (i * 0.37) if regression else (labels if labels is not None else i % 2)
            rows.append(f"{smiles},{label}")
        (folder / f"{split}.csv").write_text("smiles,y\n" + "\n".join(rows) + "\n")
    return str(folder)


@pytest.fixture
def store(tmp_path) -> str:
    from dmf_ray.encoders.base import create_encoder
    from dmf_ray.store import EmbeddingStore

    path = str(tmp_path / "store")
    EmbeddingStore.open_or_create(path).register_modalities(
        {m: create_encoder(m).spec() for m in ("maccs", "rdkit2d")})
    return path


def test_metric_follows_the_tasks():
    assert TuneConfig(store="s", out="o", search=["lr=grid:0.1,0.2"]).metric == "val/loss"
    config = TuneConfig(store="s", out="o", search=["lr=grid:0.1,0.2"], tasks="bbbp=/d/bbbp")
    assert config.metric == DOWNSTREAM_METRIC and config.tasks == ["bbbp=/d/bbbp"]
    # Scored and recorded, but not the objective, when the user says so.
    assert TuneConfig(store="s", out="o", search=["lr=grid:0.1,0.2"], tasks=["x"], metric="val/loss").metric == "val/loss"
    with pytest.raises(ValueError, match="needs at least one task"):
        TuneConfig(store="s", out="o", search=["lr=grid:0.1,0.2"], metric=DOWNSTREAM_METRIC)


def test_tasks_are_named_as_dmf_evaluate_names_them():
    """tune reads --task with evaluate's own grammar (TaskSpec.parse, handed in by the CLI)."""
    def parsed(text):
        spec = TASKS.parse_task(text)
        return spec.name, spec.source

    assert parsed("bbbp=/data/moleculenet/bbbp") == ("bbbp", "/data/moleculenet/bbbp")
    assert parsed("/data/moleculenet/bbbp/") == ("bbbp", "/data/moleculenet/bbbp/")
    assert parsed("/data/mine.csv.gz") == ("mine", "/data/mine.csv.gz")
    with pytest.raises(ValueError, match="give one path"):
        parsed("x=")


def test_bad_tasks_are_refused_before_ray_every_problem_at_once(store, tmp_path):
    good = _write_task(tmp_path / "good")
    config = TuneConfig(store=store, out=str(tmp_path / "o"), search=["lr=grid:0.1,0.2"],
                        tasks=[f"good={good}", f"reg={_write_task(tmp_path / 'reg', regression=True)}",
                               f"missing={tmp_path / 'nothere'}"])
    with pytest.raises(ValueError) as err:
        check_tune(config, TRAINING, log=lambda m: None, tasks=TASKS)
    text = str(err.value)
    assert "task reg: a regression task" in text and "missing" in text and "task good" not in text
    with pytest.raises(ValueError, match="needs a TaskEntry"):
        check_tune(config.model_copy(update={"tasks": [good]}), TRAINING, log=lambda m: None)
    plan = check_tune(config.model_copy(update={"tasks": [good]}), TRAINING, log=lambda m: None, tasks=TASKS)
    assert plan.mode == "max" and [t.name for t in plan.tasks] == ["good"]
    assert list(plan.specs) == ["maccs", "rdkit2d"] and plan.specs["maccs"]["encoder"]


def test_valid_split_with_one_class_is_refused(store, tmp_path):
    folder = tmp_path / "oneclass"
    _write_task(folder)
    (folder / "valid.csv").write_text("smiles,y\nCCO,1\nCCN,1\n")
    config = TuneConfig(store=store, out=str(tmp_path / "o"), search=["lr=grid:0.1,0.2"], tasks=[str(folder)])
    with pytest.raises(ValueError, match="task oneclass: no label column has both classes in its valid split"):
        check_tune(config, TRAINING, log=lambda m: None, tasks=TASKS)


def test_objective_is_evaluates_logreg_valid_roc_auc_and_never_reads_test(store, tmp_path):
    from dmf_ray.artifact import load_fusion_model
    from dmf_ray.pipelines.evaluate.downstream import fit_and_score
    from dmf_ray.pipelines.evaluate.features import featurize_smiles
    from dmf_ray.pipelines.evaluate.taskdata import fused, task_data
    from dmf_ray.testing import save_random_model

    task_dir = _write_task(tmp_path / "toy")
    config = TuneConfig(store=store, out=str(tmp_path / "o"), search=["lr=grid:0.1,0.2"], tasks=[task_dir])
    plan = check_tune(config, TRAINING, log=lambda m: None, tasks=TASKS)
    lines: list[str] = []
    data = prepare_objective(plan.tasks, plan.specs, TASKS, lines.append)
    task = plan.tasks[0]
    seen = set(task.smiles["train"]) | set(task.smiles["valid"])
    assert set(task.smiles["test"]) - seen  # the test split has molecules of its own ...
    assert len(data.batch) == len(seen)  # ... and they are never encoded: train and valid only
    assert data.describe()["splits_read"] == ["train", "valid"] and "encoded" in lines[0]

    model, _ = load_fusion_model(save_random_model(tmp_path / "m", SMILES, ["maccs", "rdkit2d"], latent_dim=8))
    scores = objective_scores(model, data)
    assert set(scores) == {DOWNSTREAM_METRIC, f"{DOWNSTREAM_METRIC}/toy"}
    assert 0.0 <= scores[DOWNSTREAM_METRIC] <= 1.0 and scores[DOWNSTREAM_METRIC] == scores[f"{DOWNSTREAM_METRIC}/toy"]

    # The same figure through dmf evaluate's own path: every split encoded, fused, logreg on valid.
    every = task_data(task, featurize_smiles([s for x in task.smiles.values() for s in x], plan.specs, log=lambda m: None))
    keep = every.present
    X = [fused(model, every, keep, every.split_of(s)) for s in ("train", "valid", "test")]
    expected = fit_and_score(X[0], task.labels["train"], X[1], task.labels["valid"], X[2], task.labels["test"],
                             "classification", learner="logreg")["valid_metric"]
    assert math.isclose(scores[DOWNSTREAM_METRIC], expected, abs_tol=1e-9)
    assert np.isfinite(expected)
