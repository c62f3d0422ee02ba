"""``dmf evaluate``: downstream benchmark of a model (Table 1, Figures 2-5). Needs no Ray: molecules
are encoded in a process pool on this node and the downstream learners use --n-jobs cores."""

from __future__ import annotations

import argparse
import os

from dmf_ray.cli import console
from dmf_ray.cli.flags import add_config_flags, build_config

RENAME = {"tasks": "task", "label_columns": "label"}
TASK_HELP = ("a task, repeatable: NAME=FOLDER (train/valid/test.csv inside), NAME=TRAIN,VALID,TEST, or one file "
             "(split with --split, scaffold by default); NAME defaults to the folder or file name")


def configure_evaluate(parser: argparse.ArgumentParser) -> None:
    from dmf_ray.pipelines.evaluate.run import EvaluateConfig

    flags = add_config_flags(
        parser, EvaluateConfig, rename=RENAME, required={"model", "tasks", "out"},
        # A task may hold commas (three files), so --task repeats instead of splitting on commas.
        overrides={"tasks": {"action": "append", "type": str, "metavar": "[NAME=]PATH", "help": TASK_HELP}},
    )
    parser.set_defaults(func=run_evaluate, flags=flags)


def run_evaluate(args: argparse.Namespace) -> int:
    from dmf_ray.pipelines.evaluate.run import EvaluateConfig, evaluate

    config = build_config(EvaluateConfig, args.flags.values(args))
    with console.step("evaluate") as bar:
        result = console.with_progress(evaluate, bar, config, log=console.log)
    console.log(f"report: {os.path.join(result.out, 'report.md')} ({result.seconds:.0f} s)")
    return 0
