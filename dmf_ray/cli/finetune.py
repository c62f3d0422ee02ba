"""``dmf finetune``: a pretrained model plus a head on a task's labels, then its robustness
figures. Flags: one per FinetuneConfig field, plus --label. Starts no Ray: it runs in this process
(a MoleculeNet task fits in memory; see dmf_ray.pipelines.finetune.fit)."""

from __future__ import annotations

import argparse
import json

from dmf_ray.cli import console
from dmf_ray.cli.flags import add_config_flags, build_config


def configure_finetune(parser: argparse.ArgumentParser) -> None:
    from dmf_ray.pipelines.finetune import FinetuneConfig

    flags = add_config_flags(parser, FinetuneConfig, required={"model", "task", "out"})
    parser.add_argument("--label", dest="labels", action="append", metavar="COLUMN",
                        help="label column of the task's CSVs (repeatable; default: the task's known labels, "
                             "else its numeric non-id columns)")
    parser.set_defaults(func=run_finetune, flags=flags)


def run_finetune(args: argparse.Namespace) -> int:
    # The CLI loads the task with the evaluate workflow's loader and hands it to finetune:
    # workflows never import each other (issue 12).
    from dmf_ray.pipelines.evaluate.tasks import load_task
    from dmf_ray.pipelines.finetune import FinetuneConfig, finetune, robustness

    config = build_config(FinetuneConfig, args.flags.values(args))
    task = load_task(config.task, label_columns=args.labels)
    result = finetune(config, task, log=console.log)
    figures = robustness(result.model_dir, task)
    console.log(f"test ROC-AUC with 0/1/2 modalities withheld: {json.dumps(figures['mean'])}")
    return 0
