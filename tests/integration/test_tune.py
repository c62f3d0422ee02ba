"""dmf_ray.pipelines.tune on the shared local Ray: a real 2-trial search (each trial a Ray Train
run) over a small real store, ASHA stopping the bad trial, the best model written and loadable;
and a 2-trial search on the downstream objective (valid ROC-AUC on a small real bbbp task)."""

from __future__ import annotations

import json
import time
from itertools import islice

import pytest

from dmf_ray.artifact import load_fusion_model, read_model_config
from dmf_ray.pipelines.featurize import featurize
from dmf_ray.pipelines.train import TrainConfig, check_training, train
from dmf_ray.pipelines.train.checkpoints import load_checkpoint
from dmf_ray.pipelines.tune import (DOWNSTREAM_METRIC, TUNE_FILE, TrainingEntry, TuneConfig, check_tune,
                                    objective_scores, prepare_objective, tune)

pytestmark = pytest.mark.integration

NAMES = ["maccs", "rdkit2d"]
TINY = {"model": {"latent_dim": 16, "gate_hidden": 16, "attention_hidden": 8, "decoder_hidden": 32, "dropout": 0.0},
        "batch_size": 32, "val_fraction": 0.15, "workers": 1}
TRAINING = TrainingEntry(TrainConfig, train, check_training, load_checkpoint)


@pytest.fixture(scope="module")
def store(ray_session, tmp_path_factory) -> str:
    import os

    import rdkit

    root = tmp_path_factory.mktemp("tune_store")
    smi = root / "mols.smi"
    with open(os.path.join(os.path.dirname(rdkit.__file__), "Data", "NCI", "first_5K.smi")) as f:
        smi.write_text("".join(islice(f, 300)))
    uri = str(root / "store")
    featurize([str(smi)], uri, NAMES, shard_rows=300, log=lambda m: None)
    return uri


def test_bad_search_refused_before_ray(tmp_path):
    # No store needed: the settings are checked against TrainConfig first, every problem at once.
    config = TuneConfig(store=str(tmp_path / "nostore"), out=str(tmp_path / "o"), settings={"batch_size": 32},
                        search=["model.latent_dim=choice:16,-4", "model.nonsense=grid:1,2", "lr=uniform:0.0:0.1"])
    with pytest.raises(ValueError) as err:
        check_tune(config, TRAINING, log=lambda m: None)
    message = str(err.value)
    assert "search model.latent_dim=-4: model.latent_dim" in message
    assert "model.nonsense" in message and "search lr=0.0: lr" in message
    assert "latent_dim=16" not in message  # the valid value is not reported


def test_two_trials_asha_stops_the_bad_one_and_best_is_written(store, tmp_path, capfd):
    out = tmp_path / "tuned"
    lines: list[str] = []
    config = TuneConfig(store=store, out=str(out), epochs=4, settings=TINY, search=["lr=grid:0.01,1e-9"],
                        num_samples=1, grace_period=1, reduction_factor=2, max_concurrent_trials=1)
    result = tune(config, TRAINING, log=lines.append)

    by_lr = {r.params["lr"]: r for r in result.trials}
    good, bad = by_lr[0.01], by_lr[1e-9]
    assert good.error is None and bad.error is None
    # Grid order and one trial at a time: the good trial sets the rungs, the bad one is cut at one.
    assert good.epochs_run == 4 and not good.stopped_early
    assert bad.stopped_early and bad.epochs_run < 4, bad
    assert bad.history[0] > good.history[0]
    assert result.best.trial_id == good.trial_id and result.best.metric == good.history[-1]

    card = read_model_config(out)
    assert card["training"]["lr"] == 0.01 and card["training"]["epochs"] == 4
    assert card["training"]["latent_dim"] == 16
    model, _ = load_fusion_model(out)
    assert model.config.modalities == NAMES
    summary = json.loads((out / TUNE_FILE).read_text())
    assert summary["best"] == good.trial_id and len(summary["trials"]) == 2
    assert any("stopped by ASHA" in line for line in lines)
    # Progress while it runs: a line per trial epoch, from the driver.
    assert sum(f"trial {good.trial_id} " in line and "/4, val/loss " in line for line in lines) == 4, lines
    # ... and none of Ray Tune's own console output, which ignores verbose=0 in its default reporter.
    console = capfd.readouterr()
    assert "Configuration for experiment" not in console.out + console.err
    assert "tensorboard" not in (console.out + console.err).lower()
    # The stopped trial's Ray Train placement group is freed (the test cluster has no dashboard, so
    # Ray Train's own cleaner cannot): every CPU is back for the next test.
    import ray

    deadline = time.time() + 30
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.time() < deadline:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
    with pytest.raises(ValueError, match="not empty"):
        check_tune(config, TRAINING, log=lambda m: None)


@pytest.fixture(scope="module")
def small_bbbp(shared_data, tmp_path_factory) -> str:
    """A real task small enough for a test: the first 200 train, 100 valid and 20 test rows of bbbp."""
    source = shared_data / "moleculenet" / "bbbp"
    if not (source / "train.csv").exists():
        pytest.skip(f"bbbp not found at {source}")
    folder = tmp_path_factory.mktemp("bbbp_small") / "bbbp"
    folder.mkdir()
    for split, rows in (("train", 200), ("valid", 100), ("test", 20)):
        lines = (source / f"{split}.csv").read_text().splitlines()
        (folder / f"{split}.csv").write_text("\n".join(lines[: rows + 1]) + "\n")
    return str(folder)


def test_downstream_objective_picks_the_trial_with_the_best_valid_roc_auc(store, small_bbbp, tmp_path, monkeypatch):
    import os

    from dmf_ray.cli.tune import entries

    _, tasks = entries()  # the evaluate workflow's loader, featurizer and learner, as the CLI wires them
    out = tmp_path / "tuned"
    lines: list[str] = []
    # The store as a user types it, relative to the working directory: each trial runs in its own
    # trial directory and must still find it (it once failed every trial with "not a dmf_ray store").
    monkeypatch.chdir(tmp_path)
    store = os.path.relpath(store, tmp_path)
    # grace_period = epochs: ASHA's only rung is the last epoch, so both trials report every epoch
    # (a trial below the other there is cut before it writes its model; its history stays).
    settings = {**TINY, "model": {k: v for k, v in TINY["model"].items() if k != "latent_dim"}}
    config = TuneConfig(store=store, out=str(out), epochs=2, settings=settings, search=["model.latent_dim=grid:4,16"],
                        tasks=[f"bbbp={small_bbbp}"], num_samples=1, grace_period=2, max_concurrent_trials=1)
    assert config.metric == DOWNSTREAM_METRIC
    result = tune(config, TRAINING, log=lines.append, tasks=tasks)

    assert result.mode == "max" and len(result.trials) == 2
    for r in result.trials:
        assert r.error is None and r.epochs_run == 2, r
        assert all(0.0 <= v <= 1.0 for v in r.history), r.history
        assert r.final[f"{DOWNSTREAM_METRIC}/bbbp"] == r.history[-1] and r.final["val/loss"] is not None
    best = max(result.trials, key=lambda r: r.history[-1])
    assert result.best.trial_id == best.trial_id and result.best.metric == best.history[-1]

    # The published model is the best trial's: its valid ROC-AUC, recomputed here from the model
    # directory, is the figure the search chose it by (ROC-AUC is rank-based: a last-bit difference
    # in the fused vectors between the Train controller and this process may flip one near-tie).
    model, _ = load_fusion_model(out)
    assert model.config.latent_dim == best.params["model.latent_dim"]
    plan = check_tune(config.model_copy(update={"out": str(tmp_path / "again")}), TRAINING, lambda m: None, tasks)
    recomputed = objective_scores(model, prepare_objective(plan.tasks, plan.specs, tasks, lambda m: None))
    assert abs(recomputed[DOWNSTREAM_METRIC] - result.best.metric) < 2e-3, (recomputed, result.best.metric)

    summary = json.loads((out / TUNE_FILE).read_text())
    assert summary["metric"] == DOWNSTREAM_METRIC and summary["best"] == best.trial_id
    objective = summary["objective"]
    assert objective["splits_read"] == ["train", "valid"] and objective["tasks"]["bbbp"]["valid"] == 100
    assert "test" not in objective["tasks"]["bbbp"]
    assert any("their test splits were never read" in line for line in lines)
