"""dmf_ray.pipelines.train on the shared local Ray, with a small real, partially paired store.

A 2-worker CPU fit costs ~20-40 s of fixed Ray Train overhead here, so the file runs two fits
(one in-process; one with 2 DDP workers, interrupted, resumed and restarted, whose model is then
checked) and shares one store between all tests.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from dmf_ray.artifact import read_model_config
from dmf_ray.pipelines.featurize import featurize
from dmf_ray.inference import FusionEmbedder, fuse_arrays
from dmf_ray.model import DynamicFusion, FusionConfig
from dmf_ray.store import EmbeddingStore
from dmf_ray.pipelines.train import (FAIL_AT_EPOCH_ENV, METRICS_FILE, TRAIN_DIR, TrainConfig, TrainingError,
                                     read_metrics_file, train)
from dmf_ray.pipelines.train.data import validation_mask
from dmf_ray.pipelines.train.checkpoints import CHECKPOINT_STATE, CHECKPOINT_WEIGHTS

pytestmark = pytest.mark.integration

NAMES = ["ecfp", "maccs", "rdkit2d"]
TINY = dict(model=dict(latent_dim=16, gate_hidden=16, attention_hidden=8, decoder_hidden=32, dropout=0.0),
            batch_size=64, val_fraction=0.1, lr=3e-3)


def _smiles_lines(n: int, skip: int = 0) -> list[str]:
    import os

    import rdkit

    # RDKit's bundled first_5K.smi (the same file as conftest.rdkit_sample_file()).
    with open(os.path.join(os.path.dirname(rdkit.__file__), "Data", "NCI", "first_5K.smi")) as f:
        return list(islice(f, skip, skip + n))


@pytest.fixture(scope="module")
def store(ray_session, tmp_path_factory) -> str:
    """600 NCI molecules: 400 with ecfp+maccs+rdkit2d, 200 more with maccs only (partially
    paired; rdkit2d also fails on a few molecules of its own)."""
    root = tmp_path_factory.mktemp("train_store")
    full, extra = root / "full.smi", root / "extra.smi"
    full.write_text("".join(_smiles_lines(400)))
    extra.write_text("".join(_smiles_lines(200, skip=400)))
    uri = str(root / "store")
    featurize([str(full)], uri, NAMES, shard_rows=200, log=lambda m: None)
    featurize([str(extra)], uri, ["maccs"], shard_rows=200, log=lambda m: None)
    return uri


def _config(store: str, out: Path, **kw) -> TrainConfig:
    return TrainConfig(store=store, out=str(out), **{**TINY, **kw})


def test_store_is_partially_paired(store):
    paired = EmbeddingStore.open(store).read_numpy(NAMES)
    counts = paired.present.sum(0)
    assert counts[1] > counts[0] and counts[0] >= counts[2] > 0  # maccs > ecfp >= rdkit2d
    assert (paired.present.sum(1) == 1).sum() >= 150


def test_clear_errors_before_training(store, tmp_path):
    with pytest.raises(ValueError, match="unknown modality 'smiles'.*ecfp, maccs, rdkit2d"):
        train(_config(store, tmp_path / "a", modalities=["ecfp", "smiles"]), log=lambda m: None)
    empty = tmp_path / "empty_store"
    EmbeddingStore.open_or_create(str(empty))
    with pytest.raises(ValueError, match="is empty"):
        train(_config(str(empty), tmp_path / "b"), log=lambda m: None)
    with pytest.raises(ValueError, match="too few molecules for a validation split"):
        train(_config(store, tmp_path / "c", val_fraction=1e-9), log=lambda m: None)
    with pytest.raises(ValueError, match="invalid TrainConfig"):
        _config(store, tmp_path / "d", epochs=0)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and is not a dmf_ray model directory"):
        train(_config(store, tmp_path / "e"), log=lambda m: None)


@pytest.mark.slow
def test_in_process_fit_with_the_ray_data_join_lowers_the_loss(store, tmp_path):
    """workers=0 (in-process) over the distributed read path: same split as the driver path,
    and the loss goes down over epochs."""
    out = tmp_path / "model"
    # A constant masking rate, so training losses of different epochs are comparable (with a
    # rising rate the task gets harder every epoch and the training loss may rise: flaky).
    config = _config(store, out, workers=0, epochs=4, data_loading="distributed",
                     masking=dict(p_start=0.3, p_end=0.3))
    result = train(config, log=lambda m: None)
    assert (result.epochs_run, result.resumed_from_epoch, result.worker_restarts) == (4, None, [])  # a clean run
    paired = EmbeddingStore.open(store).read_numpy(NAMES)
    expected_valid = int(validation_mask(paired.mol_ids, TINY["val_fraction"]).sum())
    assert (result.n_train, result.n_valid) == (len(paired) - expected_valid, expected_valid)
    history = read_metrics_file(out / METRICS_FILE)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    # The fixed leave-one-out validation task and the training loss (at equal masking) improve.
    assert history[-1]["val/loss"] < history[0]["val/loss"]
    assert history[-1]["val/cos_mean"] > history[0]["val/cos_mean"]
    assert history[-1]["train/total"] < history[0]["train/total"]
    assert {h["mask_p"] for h in history} == {0.3}
    FusionEmbedder(str(out))  # loadable
    # The encoders' value kinds reach the model: Poisson for ECFP counts, Bernoulli for MACCS bits.
    fusion = read_model_config(out)["fusion"]
    assert (fusion["reconstruction"], fusion["value_kinds"]) == ("auto", ["count", "binary", "continuous"])


@pytest.mark.slow
def test_interrupted_ddp_run_resumes_restarts_from_its_checkpoint_and_writes_a_loadable_model(store, tmp_path, monkeypatch):
    # One 2-worker fit serves both: the resumed and restarted run must end with the same model a
    # clean run writes (the clean-run accounting is checked on the in-process fit above).
    out = tmp_path / "model"
    # 1) rank 1 dies before epoch 2 and no restart is allowed: the call fails after epoch 1.
    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "2")  # the test-only fault injection, never in TrainConfig
    with pytest.raises(TrainingError, match="rerun the same command to resume"):
        train(_config(store, out, workers=2, epochs=3, max_failures=0), log=lambda m: None)
    assert (out / TRAIN_DIR / "fail-injected-epoch-2").exists()
    assert not (out / "config.json").exists()
    assert [h["epoch"] for h in read_metrics_file(out / METRICS_FILE)] == [1]

    # 2) the same command again resumes after epoch 1; this time rank 1 dies before epoch 3 and
    # Ray restarts the group, which resumes from the epoch-2 checkpoint instead of epoch 0.
    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "3")
    logs: list[str] = []
    result = train(_config(store, out, workers=2, epochs=3, max_failures=1), log=logs.append)
    assert (out / TRAIN_DIR / "fail-injected-epoch-3").exists()
    assert result.resumed_from_epoch == 1
    assert result.worker_restarts == [2]
    assert result.epochs_run == 2
    summary = "epochs 3/3 (2 in this run, resumed from epoch 1, worker restarts at epochs [2])"
    assert result.summary() == summary and summary in logs[-1]
    history = read_metrics_file(out / METRICS_FILE)
    assert [h["epoch"] for h in history] == [1, 2, 3]  # each epoch once, none redone from 0
    assert [h["step"] for h in history] == sorted({h["step"] for h in history})
    monkeypatch.delenv(FAIL_AT_EPOCH_ENV)
    check_ddp_model(store, out, result, logs)


def check_ddp_model(store: str, out: Path, result, logs: list[str]) -> None:
    """A finished 2-worker, 3-epoch model in ``out`` (``result``: the call that finished it):
    metrics, card, checkpoint and rerun behaviour."""
    history = read_metrics_file(out / METRICS_FILE)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    last = history[-1]
    for key in ["train/total", "train/reconstruction", "train/alignment", "train/diversity", "train/entropy",
                "train/sparsity", "val/loss", "mask_rate", "samples_per_s", "epoch_time_s",
                *[f"val/cos/{n}" for n in NAMES], *[f"attention/{n}" for n in NAMES]]:
        assert isinstance(last[key], float), key
    assert sum(last[f"attention/{n}"] for n in NAMES) == pytest.approx(1.0, abs=1e-6)
    assert all(h["replica_spread"] == 0.0 for h in history)  # DDP kept both replicas identical
    mask_p = [h["mask_p"] for h in history]
    assert mask_p == sorted(mask_p) and mask_p[0] < mask_p[-1]  # progressive masking
    assert last["train_samples"] == result.n_train - result.n_train % 2  # equal split over 2 ranks
    assert result.metrics == last

    # The card describes the model; FusionEmbedder rebuilds it and its encoders from the folder.
    card = read_model_config(out)
    s = EmbeddingStore.open(store)
    assert card["modalities"] == {n: s.modalities[n] for n in NAMES}
    assert card["training"]["n_train"] == result.n_train and card["training"]["workers"] == 2
    assert set(card["versions"]) >= {"dmf_ray", "torch", "ray", "rdkit"}
    assert card["metrics"] == last
    embedder = FusionEmbedder(str(out))
    rows = embedder.embed_smiles(["CCO", "c1ccccc1O", "not a smiles"])
    assert rows[0]["embedding"].shape == (16,) and rows[2]["error"]

    # Same outputs from the final checkpoint's weights as from the saved model.
    checkpoints = [p for p in (out / TRAIN_DIR / "run").glob("checkpoint_*") if p.is_dir()]
    last_ckpt = max(checkpoints, key=lambda p: json.loads((p / CHECKPOINT_STATE).read_text())["epoch"])
    from safetensors.torch import load_file

    again = DynamicFusion(FusionConfig.from_dict(card["fusion"]))
    again.load_state_dict(load_file(str(last_ckpt / CHECKPOINT_WEIGHTS)))
    paired = s.read_numpy(NAMES)
    a = fuse_arrays(embedder.model, paired.values, paired.present, with_reconstructions=True)
    b = fuse_arrays(again.eval(), paired.values, paired.present, with_reconstructions=True)
    np.testing.assert_array_equal(a.fused, b.fused)
    np.testing.assert_array_equal(a.attention, b.attention)
    # Molecules with one modality still get a vector; normalisation came from the training split.
    only_maccs = paired.present.sum(1) == 1
    assert np.abs(a.fused[only_maccs]).sum(1).min() > 0
    mean, _ = embedder.model.get_normalization()["rdkit2d"]
    train_rows = ~validation_mask(paired.mol_ids, TINY["val_fraction"]) & paired.present[:, 2]
    np.testing.assert_allclose(mean, paired.values["rdkit2d"][train_rows].astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)

    # Rerunning the finished command does nothing; other settings are refused, not mixed in.
    again_result = train(_config(store, out, workers=1, epochs=3), log=logs.append)
    assert again_result.already_complete and again_result.epochs_run == 0
    assert again_result.summary() == "epochs 3/3 (already trained, nothing to do)"
    assert any("already holds this model" in m for m in logs)
    with pytest.raises(ValueError, match="epochs: 3 -> 4"):
        train(_config(store, out, workers=2, epochs=4), log=logs.append)
