"""The dmf command without a cluster: fast help, help for every flag, one-line user errors, and the
checks that must answer before Ray starts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dmf_ray.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
HEAVY = ("torch", "ray", "rdkit")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)


def test_help_lists_every_command_and_imports_no_torch_ray_or_rdkit():
    done = run_python(
        "import sys\nfrom dmf_ray.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])"
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    for name in COMMANDS:
        assert name in done.stdout


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_of_every_command_has_help(command):
    for parser in _parsers(build_parser([command])):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and action.help.strip(), f"{parser.prog}: {action.option_strings or action.dest}"


def test_named_flags_say_what_they_do():
    def help_of(command: str, option: str) -> str:
        parser = build_parser([command])
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        return next(a.help for a in sub._actions if option in a.option_strings)

    assert "port" in help_of("serve", "--port").lower()
    assert "smiles" in help_of("embed", "--smiles-column").lower()
    assert "source_id" in help_of("embed", "--id-column")
    assert "start over" in help_of("quickstart", "--overwrite")


def test_train_has_a_flag_for_every_config_field():
    from dmf_ray.cli.flags import config_fields
    from dmf_ray.pipelines.train.config import TrainConfig

    parser = build_parser(["train"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    flagged = {f.path[0] for f in sub.get_default("flags").flags}
    assert flagged == {f.name for f in config_fields(TrainConfig)}


def test_serve_has_a_flag_for_every_serve_args_field():
    from dmf_ray.cli.flags import config_fields
    from dmf_ray.pipelines.serve.args import ServeArgs

    parser = build_parser(["serve"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    flags = sub.get_default("flags").flags
    assert {f.path[0] for f in flags} == {f.name for f in config_fields(ServeArgs)}
    assert ("encoders", "autoscaling", "max_replicas") in {f.path for f in flags}


def test_serve_flags_override_the_config_file_field_by_field(tmp_path):
    pytest.importorskip("dmf_ray.pipelines.serve.server", reason="load_serve_config arrives with the serve split")
    from dmf_ray.cli.serve import serve_settings

    parser = build_parser(["serve"])
    args = parser.parse_args(["serve", "--config", str(REPO / "serve_configs" / "fusion.yaml"), "--model", str(tmp_path),
                              "--encoders-autoscaling-max-replicas", "3", "--port", "8123"])
    serve_args, host, port = serve_settings(args)
    assert serve_args.model_dir == str(tmp_path) and (host, port) == ("127.0.0.1", 8123)
    assert serve_args.encoders.autoscaling.max_replicas == 3
    assert serve_args.encoders.autoscaling.min_replicas == 1  # from the file / role defaults


@pytest.fixture
def empty_store(tmp_path) -> str:
    from dmf_ray.store import EmbeddingStore

    from dmf_ray.encoders.base import create_encoder

    path = str(tmp_path / "store")
    EmbeddingStore.open_or_create(path).register_modalities({"maccs": create_encoder("maccs").spec()})
    return path


def test_store_info_answers_without_torch_or_ray(empty_store):
    done = subprocess.run([sys.executable, "-m", "dmf_ray.cli", "store", "info", empty_store, "--json"],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["molecules"] == 0 and list(info["modalities"]) == ["maccs"]
    probe = run_python(
        "import sys, io, contextlib\nfrom dmf_ray.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    main(['store', 'info', {empty_store!r}])\n"
        "print('LOADED', [m for m in ('torch', 'ray') if m in sys.modules])"
    )
    assert "LOADED []" in probe.stdout, probe.stderr


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def test_bad_settings_are_one_line_naming_the_flag(empty_store, tmp_path, capsys):
    assert main(["train", "--store", empty_store, "--out", str(tmp_path / "m"), "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("dmf: error:") and "--epochs" in err
    assert not _ray_started()


def test_unknown_modality_is_refused_before_ray_starts(empty_store, tmp_path, capsys):
    assert main(["train", "--store", empty_store, "--out", str(tmp_path / "m"), "--modalities", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and err.count("\n") == 0
    assert not _ray_started()


def test_missing_store_is_one_line(tmp_path, capsys):
    assert main(["store", "info", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmf: error:") and err.count("\n") == 0


def test_quickstart_refuses_other_settings_before_anything_starts(tmp_path, capsys):
    out = tmp_path / "qs"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text(json.dumps({"training": {"epochs": 3}}))
    assert main(["quickstart", "--out", str(out), "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert "trained for 3 epochs" in err and "--overwrite" in err
    assert not _ray_started() and (out / "model" / "config.json").exists()


def test_quickstart_never_deletes_what_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "qs"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    assert main(["quickstart", "--out", str(out), "--overwrite"]) == 2
    assert "thesis.tex" in capsys.readouterr().err and (out / "thesis.tex").exists()


def test_overwrite_clears_a_previous_quickstart(tmp_path):
    from dmf_ray.cli.quickstart import QuickstartOptions, check_out_folder

    out = tmp_path / "qs"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text(json.dumps({"training": {"epochs": 3}}))
    (out / "fused.parquet").mkdir()
    check_out_folder(QuickstartOptions(out=str(out), epochs=5, overwrite=True))
    assert os.listdir(out) == []


def test_final_training_line_counts_all_epochs():
    from dmf_ray.cli.train import epochs_line

    def result(run, before, complete=False):
        return SimpleNamespace(epochs_run=run, epochs_total=6, resumed_from_epoch=before, already_complete=complete)

    assert epochs_line(result(3, 3)) == "epochs 6/6 (3 in this run, resumed from epoch 3)"
    assert epochs_line(result(6, None)) == "epochs 6/6 (6 in this run)"
    assert epochs_line(result(0, 6, complete=True)).startswith("epochs 6/6 (already trained")


@pytest.mark.parametrize("job", ["featurize", "train", "embed", "evaluate"])
def test_job_entry_points_take_the_command_flags(job):
    done = subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"), "--help"], env=ENV,
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert f"dmf {job}" in done.stdout and "--out" in done.stdout or "--store" in done.stdout


def test_follow_moves_a_bar_from_a_file_written_by_others(tmp_path):
    import time

    from dmf_ray.cli import console
    from dmf_ray.cli.train import _lines

    seen = []

    class Recorder:  # stands in for rich's Progress: records what the bar was told
        def update(self, task, completed, total):
            seen.append((completed, total))

    metrics = tmp_path / "metrics.jsonl"
    with console.follow(console.Step(Recorder(), 0), lambda: _lines(str(metrics)), 3, every_s=0.02):
        time.sleep(0.1)  # no file yet: nothing to show, no error
        metrics.write_text('{"epoch": 1}\n{"epoch": 2}\n')
        deadline = time.time() + 5
        while (2, 3) not in seen and time.time() < deadline:
            time.sleep(0.02)
    assert (2, 3) in seen and all(total == 3 for _, total in seen)


def test_train_flags_build_the_nested_train_config():
    from dmf_ray.cli.flags import build_config
    from dmf_ray.pipelines.train import TrainConfig

    parser = build_parser(["train"])

    def config(*flags: str):
        args = parser.parse_args(["train", "--store", "st", "--out", "m", *flags])
        return build_config(TrainConfig, args.flags.values(args))

    c = config("--modalities", "ecfp, maccs", "--epochs", "3", "--workers", "1", "--gpu", "--latent-dim", "64",
               "--batch-size", "32", "--mask-kind", "cosine", "--overwrite", "--cpus-per-worker", "0.5")
    assert c.modalities == ["ecfp", "maccs"]
    assert (c.epochs, c.workers, c.use_gpu, c.model.latent_dim, c.batch_size) == (3, 1, True, 64, 32)
    assert c.masking.kind == "cosine" and c.fresh and c.cpus_per_worker == 0.5
    assert config() == TrainConfig(store="st", out="m")
    nested = config("--mask-steps", "3", "--std-floor", "1e-4", "--entropy-weight", "0")
    assert (nested.masking.steps, nested.model.std_floor, nested.model.entropy_weight) == (3, 1e-4, 0.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--store", "st", "--out", "m", "--mask-kind", "zigzag"])


def test_a_workflow_gets_a_progress_callback_only_when_a_bar_is_shown():
    """Without a bar (output redirected, --verbose) no callback is handed over, so featurize and
    embed do not read their input files a second time just to count rows for a display."""
    from dmf_ray.cli import console

    def workflow(progress=None):
        return progress

    assert console.with_progress(workflow, console.Step()) is None
    shown = console.Step(object(), 0)  # any progress display: only its presence matters here
    assert console.with_progress(workflow, shown) == shown.update


def test_an_embed_input_error_exits_2_every_time(tmp_path):
    """dmf embed refusing an input file before Ray: one line and exit 2, never an abort at
    interpreter teardown (torch + pyarrow's CSV reader made it exit 134 about half the time)."""
    from dmf_ray.testing import save_random_model

    model = save_random_model(tmp_path / "model", ["CCO", "c1ccccc1"], ["maccs"], latent_dim=8, gate_hidden=8,
                              attention_hidden=4, decoder_hidden=8)
    (tmp_path / "in.csv").write_text("smiles,name\nCCO,a\n")
    command = [sys.executable, "-m", "dmf_ray.cli", "embed", "--model", str(model), str(tmp_path / "in.csv"),
               "--smiles-column", "nope", "--out", str(tmp_path / "out")]
    for _ in range(5):  # the abort was a teardown race: five clean exits in a row
        done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == f"dmf: error: {tmp_path / 'in.csv'}: no column 'nope' (columns: smiles, name)"
