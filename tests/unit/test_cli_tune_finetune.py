"""``dmf tune`` and ``dmf finetune`` in the CLI: help, flags that build the configs, and bad input
refused in one line (exit 2) before Ray starts (dmf finetune starts no Ray at all)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dmf_ray.cli import COMMANDS, build_parser, main
from dmf_ray.cli.flags import build_config

REPO = Path(__file__).resolve().parents[2]


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmf: error:") and err.count("\n") == 0, err
    return err


@pytest.fixture
def store(tmp_path) -> str:
    from dmf_ray.encoders.base import create_encoder
    from dmf_ray.store import EmbeddingStore

    path = str(tmp_path / "store")
    EmbeddingStore.open_or_create(path).register_modalities({"maccs": create_encoder("maccs").spec()})
    return path


@pytest.mark.parametrize("command, flags", [("tune", ("--search", "--set", "--num-samples", "--overwrite")),
                                            ("finetune", ("--model", "--task", "--label", "--mask-p"))])
def test_help_works_and_lists_the_flags(command, flags):
    assert command in COMMANDS
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "dmf_ray.cli", command, "--help"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"dmf {command}" in done.stdout and all(f in done.stdout for f in flags)


def test_tune_flags_build_the_config_and_repeat_items_with_commas():
    from dmf_ray.pipelines.tune import SearchDim, TuneConfig

    args = build_parser(["tune"]).parse_args(
        ["tune", "--store", "st", "--out", "o", "--search", "model.latent_dim=choice:64,128",
         "--search", "lr=loguniform:1e-4:1e-2", "--set", "batch_size=32", "--num-samples", "3", "--overwrite"])
    config = build_config(TuneConfig, args.flags.values(args))
    assert config.dims() == [SearchDim("model.latent_dim", "choice", (64, 128)),
                             SearchDim("lr", "loguniform", (1e-4, 1e-2))]
    assert config.num_samples == 3 and config.fresh and config.fixed()["batch_size"] == 32


def test_tune_bad_search_is_one_line_before_ray_starts(store, tmp_path, capsys):
    assert main(["tune", "--store", store, "--out", str(tmp_path / "t"), "--search", "lr=foo:1"]) == 2
    assert "foo" in _one_line_error(capsys)
    assert not _ray_started()


def test_tune_unknown_modality_is_one_line_before_ray_starts(store, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tune", "--store", store, "--out", str(out), "--search", "lr=loguniform:1e-4:1e-2",
                 "--set", "modalities=nope"]) == 2
    assert "nope" in _one_line_error(capsys)
    assert not _ray_started() and not out.exists()


def test_tune_task_flag_repeats_and_makes_the_objective_downstream():
    from dmf_ray.pipelines.tune import DOWNSTREAM_METRIC, TuneConfig

    args = build_parser(["tune"]).parse_args(
        ["tune", "--store", "st", "--out", "o", "--search", "lr=grid:0.1,0.2", "--task", "bbbp=/d/bbbp",
         "--task", "/d/bace"])
    config = build_config(TuneConfig, args.flags.values(args))
    assert config.tasks == ["bbbp=/d/bbbp", "/d/bace"] and config.metric == DOWNSTREAM_METRIC


def test_tune_bad_task_is_one_line_before_ray_starts(store, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tune", "--store", store, "--out", str(out), "--search", "lr=grid:0.1,0.2",
                 "--task", f"gone={tmp_path / 'nowhere'}"]) == 2
    assert "task gone=" in _one_line_error(capsys)
    assert main(["tune", "--store", store, "--out", str(out), "--search", "lr=grid:0.1,0.2",
                 "--metric", "downstream/roc_auc"]) == 2
    assert "needs at least one task" in _one_line_error(capsys)
    assert not _ray_started() and not out.exists()


def test_finetune_flags_build_the_config():
    from dmf_ray.pipelines.finetune import FinetuneConfig

    args = build_parser(["finetune"]).parse_args(
        ["finetune", "--model", "m", "--task", "t", "--out", "o", "--epochs", "4", "--fusion-lr", "0",
         "--label", "p_np", "--label", "other"])
    config = build_config(FinetuneConfig, args.flags.values(args))
    assert (config.model, config.task, config.out, config.epochs, config.fusion_lr) == ("m", "t", "o", 4, 0.0)
    assert args.labels == ["p_np", "other"]


def test_finetune_bad_setting_names_the_flag(tmp_path, capsys):
    assert main(["finetune", "--model", "m", "--task", "t", "--out", str(tmp_path / "o"), "--mask-p", "2"]) == 2
    assert "--mask-p" in _one_line_error(capsys)


def test_finetune_missing_task_and_missing_model_are_one_line(tmp_path, capsys):
    assert main(["finetune", "--model", "m", "--task", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere" in _one_line_error(capsys)
    task = tmp_path / "task"
    task.mkdir()
    for split in ("train", "valid", "test"):
        (task / f"{split}.csv").write_text("smiles,y\nCCO,1\nc1ccccc1,0\nCCN,1\nCCC,0\n")
    assert main(["finetune", "--model", str(tmp_path / "no-model"), "--task", str(task),
                 "--out", str(tmp_path / "o")]) == 2
    assert "no-model" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists() and not _ray_started()
