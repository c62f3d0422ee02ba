"""The files a run adds to the report writer's: ``summary.json`` with the model, protocol and
per-task extras, ``evaluation.json`` (every detail), and report.md's model, protocol and timing
sections."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmf_ray.pipelines.evaluate import report as _report
from dmf_ray.pipelines.evaluate.config import EvaluateConfig
from dmf_ray.pipelines.evaluate.results import TaskResult, summary
from dmf_ray.pipelines.evaluate.tasks import SPLITS

DETAILS_FILE = "evaluation.json"
_TASK_EXTRAS = ("training_overlap", "encoder_overlap", "reconstruction_cosine_raw", "featureless_rows")


def write_outputs(config: EvaluateConfig, results: Sequence[TaskResult], details: dict[str, Any],
                  partial: bool = False) -> tuple[dict[str, Path], dict[str, Any]]:
    """Every output file into ``config.out``: the report writer's, then summary.json with the model,
    protocol and per-task extras added, evaluation.json, and the run's sections appended to
    report.md. Returns (name -> path, the summary document)."""
    out = Path(config.out)
    title = config.title + (f" (partial: {len(results)} of {len(config.tasks)} tasks so far)" if partial else "")
    paper_reason = details["protocol"].get("paper_protocol_missing")
    files = _report.write_report(results, out, title=title, paper_reason=paper_reason)
    doc = summary(results)
    doc["model"] = {k: details["model"][k] for k in ("dir", "modalities", "latent_dim", "training", "training_corpus",
                                                      "encoders_trained_on")}
    doc["protocol"] = details["protocol"]
    for name, info in details["tasks"].items():
        doc["tasks"][name].update({k: info[k] for k in _TASK_EXTRAS})
    doc["seconds"] = details["seconds"]
    write_json(files["summary"], doc)
    files["details"] = out / DETAILS_FILE
    write_json(files["details"], details)
    with open(files["report"], "a") as fh:
        fh.write("\n".join(_model_section(details, results) + _protocol_section(details, results)
                           + _timing_section(details, results)))
    return files, doc


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """``doc`` as indented JSON at ``path``; NaN/inf become null, numpy scalars Python numbers."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, np.integer)):
            return clean(x.item())
        return x

    with open(path, "w") as fh:
        json.dump(clean(doc), fh, indent=2, allow_nan=False)
        fh.write("\n")


def protocol(config: EvaluateConfig, paper_missing: str | None) -> dict[str, Any]:
    """The protocol record of summary.json: the choices that decide how to read the numbers."""
    learner = ("auto: per row the learner with the best valid metric among rf, xgboost, logreg, mlp"
               if config.learner == "auto" else config.learner)
    return {
        "seeds": config.seeds,
        "learner": config.learner,
        "downstream": f"{learner} (dmf_ray.pipelines.evaluate.learners), grid point chosen on valid "
                      + ("for every seed" if config.grid_every_seed else "for seed 0 and reused"),
        "paper_protocol": "xgboost on the frozen features of every row" if config.paper_protocol else "off",
        "paper_protocol_missing": paper_missing if config.paper_protocol else None,
        "robustness": config.robustness,
        "reconstruction_space": "normalised (model statistics; features with std at the floor left out); raw beside",
        "mask_rates": config.mask_rates,
        "attention_split": "test",
    }



_KEY_SETTINGS = ("epochs", "n_train", "n_valid", "latent_dim", "batch_size", "lr", "mask_kind", "mask_p_start",
                 "mask_p_end", "seed", "finished_at")


def _model_section(details: dict[str, Any], results: Sequence[TaskResult]) -> list[str]:
    """Model, fusion pretraining corpus and its overlap with the tasks, encoders' declared training data."""
    model = details["model"]
    training = model["training"]
    lines = ["", "## Model and pretraining corpus", "",
             f"- model: `{model['dir']}`, modalities {', '.join(model['modalities'])}, fused dim {model['latent_dim']}",
             f"- trained on: {model['training_corpus']}"]
    lines += [f"- encoder `{m}` was trained on: {', '.join(info['datasets']) or 'unnamed data'}"
              for m, info in model.get("encoders_trained_on", {}).items() if info]
    settings = {k: v for k, v in training.items() if k not in ("store", "note") and v is not None}
    if any(k in settings for k in _KEY_SETTINGS):  # the rest is in evaluation.json
        settings = {k: settings[k] for k in _KEY_SETTINGS if k in settings}
    if training.get("note"):
        lines.append(f"- note: {training['note']}")
    if settings:
        lines.append(f"- training settings: `{json.dumps(settings, sort_keys=True, default=str)}`")
    lines += ["", "Task molecules that are also in the training corpus (train/valid/test); 0 everywhere means "
              "the model never saw the task's molecules:", "", "| task | in training corpus |", "|---|---|"]
    for r in results:
        ov = details["tasks"][r.task]["training_overlap"]
        cell = "unknown" if ov is None else " / ".join(f"{ov[s]} of {r.n_molecules[s]}" for s in SPLITS)
        lines.append(f"| {r.task} | {cell} |")
    enc = [(r.task, m, ov) for r in results for m, ov in details["tasks"][r.task]["encoder_overlap"].items()]
    if enc:
        lines += ["", "Task molecules in an encoder's declared training molecules (train/valid/test):", ""]
        lines += [f"- {task} / {m}: " + " / ".join(f"{ov[s]} of {n}" for s, n in zip(SPLITS, _sizes(results, task)))
                  for task, m, ov in enc]
    return lines


def _sizes(results: Sequence[TaskResult], task: str) -> list[int]:
    r = next(r for r in results if r.task == task)
    return [r.n_molecules[s] for s in SPLITS]


def _protocol_section(details: dict[str, Any], results: Sequence[TaskResult]) -> list[str]:
    """How the figures were computed, and reconstruction cosines in both spaces."""
    proto = details["protocol"]
    lines = ["", "## Protocol", "",
              f"- downstream: {proto['downstream']}; {proto['seeds']} seed(s) of the learner (the fusion model is one fixed model).",
              f"- paper protocol table: {proto['paper_protocol']}"
              + (f" (not computed: {proto['paper_protocol_missing']})" if proto.get("paper_protocol_missing") else "") + ".",
              f"- robustness (Figure 2): `{proto['robustness']}`. " + {
                  "inference": "The learner of the Table 1 row (fitted on complete train data, chosen on valid) "
                               "predicts test molecules whose modalities are withheld: fusion re-embeds them with "
                               "those modalities marked absent; concat mean-imputes the withheld blocks with the "
                               "train means. This is the deployment case the paper's robustness claim is about.",
                  "refit": "Modalities are withheld in every split and the learner (with the learner and grid point its Table 1 "
                           "row chose) is refitted on the degraded features: it measures the information left, "
                           "not the robustness of a fitted model.",
                  "none": "skipped.",
              }[proto["robustness"]],
              "- reconstruction (Figure 3): each modality hidden on the test molecules that have it and another "
              "one, reconstructed by the decoder from the fused vector of the rest; cosine in the model's "
              "normalised space (predicting the mean scores 0; features with std at the model's floor left out). "
              "Raw-space cosine (inflated by non-negative counts and large-scale descriptors) beside:",
              ""]
    mods = list(dict.fromkeys(m for r in results for m in details["tasks"][r.task]["reconstruction_cosine_raw"]))
    if mods:
        lines += ["| task | " + " | ".join(f"{m} normalised / raw" for m in mods) + " |", "|---|" + "---|" * len(mods)]
        for r in results:
            raw = details["tasks"][r.task]["reconstruction_cosine_raw"]
            cells = [f"{r.reconstruction_cosine[m]:.3f} / {raw[m]:.3f}" if m in raw else "–" for m in mods]
            lines.append(f"| {r.task} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


# The steps of a task, as evaluation.json times them (``finetune`` with --finetune, ``robustness``
# with --robustness refit; "–" in the table when a step did not run).
_STEPS = ("prepare", "table1", "finetune", "robustness", "reconstruction_attention")


def _timing_section(details: dict[str, Any], results: Sequence[TaskResult]) -> list[str]:
    """Attention and featureless-row notes, then the time spent per task and step."""
    proto = details["protocol"]
    lines = [f"- attention (Figures 4-5): test molecules; mask rates {proto['mask_rates']} hide present modalities "
              "with `sample_training_mask` (never all of a molecule's), averaged over the seeds.",
              "- featureless rows (SMILES that do not parse, or every encoder failed) are kept with NaN features, "
              "imputed with the train column mean: " + "; ".join(
                  f"{r.task} {'/'.join(str(v) for v in details['tasks'][r.task]['featureless_rows'].values())}"
                  for r in results) + " (train/valid/test).",
              "", "## Timing", "",
              f"Featurisation: {details['featurize']['distinct_smiles']:,} distinct SMILES in "
              f"{details['featurize']['seconds']:.1f} s with {details['featurize']['workers']} process(es). "
              f"Whole run: {details.get('seconds', float('nan')):.0f} s.", "",
              "Under the `inference` protocol Figure 2 is scored by the Table 1 learners, so its time is in "
              "`table1`; `refit` fills the `robustness` column, `--finetune` the `finetune` one.", "",
              "| task | " + " | ".join(_STEPS) + " |", "|---|" + "---|" * len(_STEPS)]
    for r in results:
        sec = details["tasks"][r.task]["seconds"]
        lines.append(f"| {r.task} | " + " | ".join(f"{sec[k]:.0f} s" if k in sec else "–" for k in _STEPS) + " |")
    lines.append("")
    return lines
