"""``dmf train``: the fusion model on a store with Ray Train. Flags: one per TrainConfig field."""

from __future__ import annotations

import argparse

from dmf_ray.cli import console
from dmf_ray.cli.flags import add_config_flags, build_config

# TrainConfig field -> flag name, where the flag reads better than the field.
RENAME = {"use_gpu": "gpu", "fresh": "overwrite"}
# Nested settings -> flag prefix: the model's hyperparameters keep their own names (--latent-dim),
# the masking schedule reads --mask-p-start / --mask-kind.
PREFIXES = {"model": "", "fusion": "", "schedule": "mask", "masking": "mask"}


def configure_train(parser: argparse.ArgumentParser) -> None:
    from dmf_ray.pipelines.train import TrainConfig

    flags = add_config_flags(parser, TrainConfig, rename=RENAME, prefixes=PREFIXES, required={"store", "out"})
    console.add_run_flags(parser)
    parser.set_defaults(func=run_train, flags=flags)


def run_train(args: argparse.Namespace) -> int:
    from dmf_ray.pipelines.train import TrainConfig

    config = build_config(TrainConfig, args.flags.values(args))  # every field checked before Ray starts
    console.setup(args.verbose, args.num_cpus)
    # train() runs check_training first: a missing store or modality, settings that differ from
    # the run in --out, or a finished run ("nothing to do") answer before Ray starts.
    result = train_with_progress(config)
    console.log(f"model: {result.model_dir} ({epochs_line(result)}; metrics in {result.metrics_file})")
    return 0


def train_with_progress(config):
    """train(config) with a bar over its epochs: rank 0 appends one line per finished epoch to
    <out>/metrics.jsonl (a resumed run's earlier epochs included)."""
    import os

    from dmf_ray.files import METRICS_FILE, is_remote
    from dmf_ray.pipelines.train import train

    metrics = None if is_remote(config.out) else os.path.join(config.out, METRICS_FILE)
    with console.step("train (epochs)") as bar:
        if metrics is None:
            return console.with_progress(train, bar, config, log=console.log)
        with console.follow(bar, lambda: _lines(metrics), config.epochs):
            return console.with_progress(train, bar, config, log=console.log)


def _lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def epochs_line(result) -> str:
    """'epochs 6/6 (3 in this run, resumed from epoch 3)' for a TrainResult."""
    before = result.resumed_from_epoch or 0
    done = min(before + result.epochs_run, result.epochs_total)
    if result.already_complete:
        return f"epochs {result.epochs_total}/{result.epochs_total} (already trained: nothing to do)"
    detail = f"{result.epochs_run} in this run" + (f", resumed from epoch {before}" if before else "")
    return f"epochs {done}/{result.epochs_total} ({detail})"
