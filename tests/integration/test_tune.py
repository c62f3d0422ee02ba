"""dmf_ray.pipelines.tune on the shared local Ray: a real 2-trial search (each trial a Ray Train
run) over a small real store, ASHA stopping the bad trial, the best model written and loadable."""

from __future__ import annotations

import json
import time
from itertools import islice

import pytest

from dmf_ray.artifact import load_fusion_model, read_model_config
from dmf_ray.pipelines.featurize import featurize
from dmf_ray.pipelines.train import TrainConfig, check_training, train
from dmf_ray.pipelines.tune import TUNE_FILE, TrainingEntry, TuneConfig, check_tune, tune

pytestmark = pytest.mark.integration

NAMES = ["maccs", "rdkit2d"]
TINY = {"model": {"latent_dim": 16, "gate_hidden": 16, "attention_hidden": 8, "decoder_hidden": 32, "dropout": 0.0},
        "batch_size": 32, "val_fraction": 0.15, "workers": 1}
TRAINING = TrainingEntry(TrainConfig, train, check_training)


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


def test_two_trials_asha_stops_the_bad_one_and_best_is_written(store, tmp_path):
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
    # The stopped trial's Ray Train placement group is freed (the test cluster has no dashboard, so
    # Ray Train's own cleaner cannot): every CPU is back for the next test.
    import ray

    deadline = time.time() + 30
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.time() < deadline:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
    with pytest.raises(ValueError, match="not empty"):
        check_tune(config, TRAINING, log=lambda m: None)
