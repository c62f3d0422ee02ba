"""``dmf quickstart``: featurize -> train -> embed the ~5,000 molecules RDKit ships, offline, into
./dmf-quickstart/ (the README's main job)."""

from __future__ import annotations

import argparse
import json
import os
import shutil

from pydantic import BaseModel, ConfigDict, Field

from dmf_ray.cli import CliError, console
from dmf_ray.cli.flags import add_config_flags, build_config, nest

PARTS = ("store", "model", "fused.parquet")  # what a quickstart writes into --out


class QuickstartOptions(BaseModel):
    """What ``dmf quickstart`` takes."""

    model_config = ConfigDict(extra="forbid")

    out: str = Field("dmf-quickstart", min_length=1, description="output folder for store/, model/ and fused.parquet")
    epochs: int = Field(3, ge=1, description="training epochs")
    overwrite: bool = Field(False, description="delete a previous quickstart's output in --out and start over")
    neural: bool = Field(True, description="add ChemNet (a pretrained SMILES network whose weights ship in the fcd "
                                           "package) beside the fingerprints: a neural modality, absent for "
                                           "SMILES it cannot read (over 349 characters)")


def configure_quickstart(parser: argparse.ArgumentParser) -> None:
    flags = add_config_flags(parser, QuickstartOptions)
    console.add_run_flags(parser)
    parser.set_defaults(func=run_quickstart, flags=flags)


def rdkit_sample_file() -> str:
    import rdkit

    return os.path.join(os.path.dirname(rdkit.__file__), "Data", "NCI", "first_5K.smi")


def check_out_folder(options: QuickstartOptions) -> None:
    """Before anything starts: refuse a folder that is not a quickstart's, or a trained model of
    other settings, unless --overwrite (then the previous output is deleted)."""
    if not os.path.isdir(options.out) or not os.listdir(options.out):
        return
    others = sorted(set(os.listdir(options.out)) - set(PARTS))
    if others:
        raise CliError(f"{options.out} holds files a quickstart did not write ({', '.join(others[:3])}); "
                       "choose another --out")
    if options.overwrite:
        for part in PARTS:
            path = os.path.join(options.out, part)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        return
    trained = _trained_epochs(os.path.join(options.out, "model"))
    if trained is not None and trained != options.epochs:
        raise CliError(f"{options.out} holds a quickstart model trained for {trained} epochs, not {options.epochs}; "
                       "pass --overwrite to start over, or choose another --out")


def _trained_epochs(model_dir: str) -> int | None:
    """Epochs of the finished model in ``model_dir`` (or of its interrupted run), if any."""
    for path, keys in ((os.path.join(model_dir, "config.json"), ("training", "epochs")),
                       (os.path.join(model_dir, "_ray_train", "run.json"), ("epochs",))):
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                value = json.load(f)
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            return value if isinstance(value, int) else None
    return None


def run_quickstart(args: argparse.Namespace) -> int:
    options = build_config(QuickstartOptions, args.flags.values(args))
    sample = rdkit_sample_file()
    if not os.path.exists(sample):
        raise CliError(f"RDKit's sample file is missing: {sample}")
    check_out_folder(options)

    from dmf_ray.encoders import DEFAULT_ENCODERS
    from dmf_ray.pipelines.embed import embed
    from dmf_ray.pipelines.featurize import featurize
    from dmf_ray.pipelines.train import TrainConfig
    from dmf_ray.runtime import ensure_ray
    from dmf_ray.cli.store import print_store_info
    from dmf_ray.cli.train import epochs_line, train_with_progress

    store, model, fused = (os.path.join(options.out, name) for name in PARTS)
    console.setup(args.verbose, args.num_cpus)
    ensure_ray(dashboard=True)  # it trains: Ray Train's placement-group cleaner needs the dashboard

    encoders = [*DEFAULT_ENCODERS, *(["chemnet"] if options.neural else [])]
    console.log(f"[1/3] featurize {sample} (shipped with RDKit) with {', '.join(encoders)} -> {store}")
    with console.step("featurize") as bar:
        # 2,500-row shards: the 5,000 molecules make two, one per core of a laptop.
        result = console.with_progress(featurize, bar, [sample], store, encoders, shard_rows=2_500,
                                       log=console.log)
    console.log(f"      {result.rows_read:,} new rows in {result.seconds:.1f} s")
    print_store_info(store, as_json=False)

    console.log(f"[2/3] train the fusion model for {options.epochs} epochs with Ray Train -> {model}")
    config = build_config(TrainConfig, {"store": store, "out": model, "epochs": options.epochs, "workers": 1,
                                        **nest(TrainConfig, {"latent_dim": 128})})
    trained = train_with_progress(config)
    console.log(f"      {epochs_line(trained)}; per-epoch metrics in {trained.metrics_file}")

    console.log(f"[3/3] embed the library with the trained model -> {fused}")
    with console.step("embed") as bar:
        # From the store: its vectors are fused as they are (no encoder runs again, ChemNet
        # included), and its failures table gives the rows that did not parse.
        embedded = console.with_progress(embed, bar, model, fused, store_uri=store, log=console.log)
    console.log(
        f"done: {embedded.rows - embedded.failed:,} fused vectors ({embedded.failed} failed rows) in {fused}. "
        f"Next: dmf serve --model {model}"
    )
    return 0
