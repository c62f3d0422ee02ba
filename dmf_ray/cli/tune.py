"""``dmf tune``: a Ray Tune search over TrainConfig settings. Flags: one per TuneConfig field."""

from __future__ import annotations

import argparse

from dmf_ray.cli import console
from dmf_ray.cli.flags import add_config_flags, build_config

RENAME = {"settings": "set", "fresh": "overwrite", "tasks": "task"}
# Items hold commas (``choice:64,128``), so these flags repeat instead of splitting on commas.
OVERRIDES = {"search": {"action": "append", "type": str, "metavar": "KEY=KIND:ARGS"},
             "settings": {"action": "append", "type": str, "metavar": "KEY=VALUE"},
             "tasks": {"action": "append", "type": str, "metavar": "NAME=FOLDER"}}


def configure_tune(parser: argparse.ArgumentParser) -> None:
    from dmf_ray.pipelines.tune import TuneConfig

    flags = add_config_flags(parser, TuneConfig, rename=RENAME, overrides=OVERRIDES,
                             required={"store", "out", "search"})
    console.add_run_flags(parser)
    parser.set_defaults(func=run_tune, flags=flags)


def entries():
    """(TrainingEntry, TaskEntry): the train workflow and the evaluate workflow's task loader,
    featurizer and learner, as tune takes them. The CLI wires workflows together: they never
    import each other (issue 12)."""
    from dmf_ray.pipelines.evaluate.downstream import fit_and_score
    from dmf_ray.pipelines.evaluate.features import featurize_smiles
    from dmf_ray.pipelines.evaluate.config import TaskSpec
    from dmf_ray.pipelines.evaluate.tasks import load_task
    from dmf_ray.pipelines.train import TrainConfig, check_training, train
    from dmf_ray.pipelines.train.checkpoints import load_checkpoint
    from dmf_ray.pipelines.tune import TaskEntry, TrainingEntry

    return (TrainingEntry(TrainConfig, train, check_training, load_checkpoint),
            TaskEntry(load_task, featurize_smiles, fit_and_score, TaskSpec.parse))


def run_tune(args: argparse.Namespace) -> int:
    from dmf_ray.pipelines.tune import TuneConfig, check_tune, tune

    config = build_config(TuneConfig, args.flags.values(args))
    training, tasks = entries()
    check_tune(config, training, log=console.log, tasks=tasks)  # every problem before Ray starts
    console.setup(args.verbose, args.num_cpus)
    result = tune(config, training, log=console.log, tasks=tasks)
    console.log(f"model: {result.model_dir} (best trial {result.best.trial_id} {result.best.params}, "
                f"{result.metric} {result.best.metric:.4f}); all trials in {result.summary_file}")
    return 0
