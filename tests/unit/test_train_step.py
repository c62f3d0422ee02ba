"""dmf_ray.pipelines.train without Ray: one training step, validation sums, config (its flags: test_cli.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dmf_ray.model import DynamicFusion, FusionConfig, FusionSettings, MaskSchedule
from dmf_ray.pipelines.train import TrainConfig, read_metrics_file
from dmf_ray.pipelines.train.checkpoints import format_metrics, write_metrics_file
from dmf_ray.pipelines.train.step import train_step, validation_sums
from dmf_ray.pipelines.train.worker import cached_batches

DIMS = [6, 8, 5]
NAMES = ["a", "b", "c"]



def correlated_data(n: int, seed: int = 0):
    """Three modalities that are noisy linear views of one 3-d factor, partially paired."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g)
    inputs = [z @ torch.randn(3, d, generator=g) + 0.05 * torch.randn(n, d, generator=g) for d in DIMS]
    present = torch.rand(n, len(DIMS), generator=g) < 0.8
    present[~present.any(1), 0] = True
    return inputs, present


def tiny_model() -> DynamicFusion:
    torch.manual_seed(0)
    return DynamicFusion(FusionConfig(modalities=NAMES, dims=DIMS, latent_dim=8, gate_hidden=8,
                                      attention_hidden=8, decoder_hidden=16, dropout=0.0))


def test_train_step_lowers_the_loss():
    inputs, present = correlated_data(256)
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = validation_sums(model, inputs, present)
    generator = torch.Generator().manual_seed(1)
    first, last = [], []
    for epoch in range(30):
        for start in range(0, 256, 64):
            batch = [x[start:start + 64] for x in inputs]
            losses, masked = train_step(model, optimizer, batch, present[start:start + 64], 0.5, generator, grad_clip=1.0)
            assert not (masked & ~present[start:start + 64]).any()  # only present modalities are hidden
            assert set(losses) >= {"total", "reconstruction"} and not losses["total"].requires_grad
            (first if epoch == 0 else last).append(float(losses["total"]))
    assert np.mean(last[-8:]) < 0.5 * np.mean(first)
    after = validation_sums(model, inputs, present)
    assert float(after["loss"] / after["loss_n"]) < float(before["loss"] / before["loss_n"])
    cos_after = after["cos"] / after["cos_n"]
    assert (cos_after > before["cos"] / before["cos_n"]).all() and (cos_after > 0.8).all()
    assert model.training  # validation_sums restores the mode


def test_validation_sums_count_the_right_rows():
    inputs, _ = correlated_data(5)
    present = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    sums = validation_sums(tiny_model().eval(), inputs, present)
    # modality m is hidden only where it is present and something else is.
    assert sums["cos_n"].tolist() == [2.0, 3.0, 2.0]
    assert float(sums["loss_n"]) == 7.0
    assert float(sums["rows"]) == 5.0
    assert float(sums["attention"].sum()) == pytest.approx(5.0)  # attention sums to 1 per row
    assert not tiny_model().eval()(inputs, present).fused.isnan().any()


def test_config_gathers_every_problem():
    with pytest.raises(ValueError) as info:
        TrainConfig(store="", out="o", epochs=0, val_fraction=1.5, masking={"kind": "zigzag"}, workers=-1, lr=0,
                    model={"latent_dim": 0})
    message = str(info.value)
    assert message.startswith("invalid TrainConfig:")
    for fragment in ("store: must be a non-empty path", "epochs: ", "val_fraction: ", "masking.kind: ",
                     "workers: ", "lr: ", "model.latent_dim: "):
        assert fragment in message, fragment
    with pytest.raises(ValueError, match="global batch"):
        TrainConfig(store="s", out="o", workers=4, batch_size=2)
    with pytest.raises(ValueError, match="listed twice"):
        TrainConfig(store="s", out="o", modalities=["a", "a"])
    with pytest.raises(ValueError, match="_fail_at_epoch: extra inputs are not permitted"):
        TrainConfig(store="s", out="o", _fail_at_epoch=2)  # test hooks are not settings
    config = TrainConfig(store="s", out="o", modalities=("b", "a"), model={"latent_dim": 32})
    assert config.modalities == ["b", "a"] and config.workers is None  # None: from the cluster
    assert config == TrainConfig(store="s", out="o", modalities=["b", "a"], model=FusionSettings(latent_dim=32))
    json.dumps(config.flat_settings())  # recorded in the model card: strict JSON
    fusion = FusionConfig.build(["x", "y"], [3, 4], config.model)
    assert fusion.latent_dim == 32 and fusion.align_weight == config.model.align_weight


def test_flat_settings_keep_the_names_models_were_recorded_with():
    """The card and the run record of models trained before the configs nested used flat names;
    a model trained then must still be recognised as the same model (no retraining)."""
    config = TrainConfig(store="s", out="o", masking=MaskSchedule(p_start=0.2, kind="cosine"),
                         # what every model before these settings used
                         model={"reconstruction": "mse", "self_reconstruction_weight": 0.0})
    flat = config.flat_settings()
    legacy = {"store", "out", "modalities", "epochs", "workers", "use_gpu", "latent_dim", "batch_size", "lr",
              "weight_decay", "grad_clip", "mask_p_start", "mask_p_end", "mask_kind", "val_fraction", "seed",
              "gate_hidden", "attention_hidden", "decoder_hidden", "dropout", "align_weight", "diversity_weight",
              "entropy_weight", "sparsity_weight", "cpus_per_worker", "torch_threads", "max_failures",
              "shuffle_buffer", "worker_cache_mb", "data_loading", "storage_path", "fresh"}
    assert set(flat) == legacy  # settings added later appear only when changed from their default
    assert (flat["mask_p_start"], flat["mask_kind"]) == (0.2, "cosine")
    assert "std_floor" in TrainConfig(store="s", out="o", model={"std_floor": 1e-3}).flat_settings()
    assert TrainConfig(store="s", out="o", model={"reconstruction": "auto"}).flat_settings()["reconstruction"] == "auto"
    assert TrainConfig(store="s", out="o").flat_settings()["self_reconstruction_weight"] == 3.0
    assert set(config.model_settings()) == legacy - {"out", "workers", "use_gpu", "cpus_per_worker", "torch_threads",
                                                     "max_failures", "worker_cache_mb", "data_loading",
                                                     "storage_path", "fresh"}


def test_metrics_file_round_trip_and_progress_line(tmp_path):
    rows = [{"epoch": 1, "epochs": 2, "train/total": 1.0, "train/reconstruction": 0.9, "val/loss": None,
             "val/cos/a": 0.5, "attention/a": 1.0, "mask_p": 0.1, "mask_rate": 0.05, "samples_per_s": 1234.0,
             "epoch_time_s": 2.0}]
    path = tmp_path / "sub" / "metrics.jsonl"
    write_metrics_file(path, rows)
    write_metrics_file(path, rows)  # rewritten, not appended
    assert read_metrics_file(path) == rows
    assert read_metrics_file(tmp_path / "missing.jsonl") == []
    line = format_metrics(rows[0], ["a"])
    assert "epoch 1/2" in line and "val loss n/a" in line and "1,234 samples/s" in line


def test_a_cached_shard_yields_every_row_once_per_epoch_in_a_new_order():
    cached = {"a": torch.arange(10.0)[:, None], "present": torch.ones(10, 1, dtype=torch.bool)}
    generator = torch.Generator().manual_seed(0)
    first = [b["a"][:, 0].tolist() for b in cached_batches(cached, 4, generator)]
    second = [b["a"][:, 0].tolist() for b in cached_batches(cached, 4, generator)]
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(10))
    assert first != second


def test_job_entry_points_have_help_and_fail_on_bad_input_in_one_line(tmp_path, capsys):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    # (jobs/train.py --help: test_cli.py's test_job_entry_points_take_the_command_flags)
    done = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--help"], cwd=repo, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr
    # A missing store is refused before any Ray start.
    import runpy

    main = runpy.run_path(str(repo / "jobs" / "train.py"))["main"]
    assert main(["--store", str(tmp_path / "nope"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "nope" in err and len(err.strip().splitlines()) == 1
