"""The report writer: every CSV, ``summary.json``, the figures and ``report.md`` from per-task results.

The caller fills one :class:`~dmf_ray.pipelines.evaluate.results.TaskResult` per task and calls
:func:`write_report`; the run adds its own sections (model, protocol, timing) afterwards.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from dmf_ray.pipelines.evaluate import figures as _figures
from dmf_ray.pipelines.evaluate.markdown import markdown
from dmf_ray.pipelines.evaluate.results import TaskResult, floats, mean_std, order_rows, summary

FILES = {
    "report": "report.md",
    "summary": "summary.json",
    "table1": "table1.csv",
    "scores": "scores.csv",
    "robustness": "robustness.csv",
    "reconstruction": "reconstruction_cosine.csv",
    "attention": "attention.csv",
    "attention_vs_mask_rate": "attention_vs_mask_rate.csv",
    "datasets": "datasets.csv",
    "params": "params.csv",
    "paper": "paper_protocol.csv",
    "not_computed": "not_computed.csv",
    "figure2": "figure2_robustness.png",
    "figure3": "figure3_reconstruction.png",
    "figure4": "figure4_attention_vs_mask_rate.png",
    "figure5": "figure5_attention.png",
}


def write_report(results: Sequence[TaskResult], out_dir: str | Path, title: str = "dmf evaluate",
                 paper_reason: str | None = None) -> dict[str, Path]:
    """Write every file of :data:`FILES` into ``out_dir`` (created); returns name -> path.

    Figures are written even without data (they then say so), so the set of files is always
    the same. ``paper_reason``: why the paper-protocol table is empty (e.g. xgboost missing).
    Raises ValueError for duplicate task names.
    """
    results = list(results)
    names = [r.task for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate task names in results: {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    _write_csvs(results, paths)
    with open(paths["summary"], "w") as fh:
        json.dump(summary(results), fh, indent=2, allow_nan=False)
        fh.write("\n")
    _figures.write_figures(results, paths)
    paths["report"].write_text(markdown(results, title, FILES, paper_reason))
    return paths


def _csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _write_csvs(results: Sequence[TaskResult], paths: dict[str, Path]) -> None:
    """Every CSV of :data:`FILES`, one row per (task, row, seed) or (task, modality) as named."""
    table1, scores, robust, recon, att, att_rate, datasets, params, paper, missing = ([] for _ in range(10))
    for r in results:
        for row in order_rows(r.rows):
            m, s = mean_std(r.rows[row])
            table1.append([r.task, r.metric, r.split, row, m, s, len(r.rows[row]), r.learner_of(row),
                           r.leaked.get(row, "")])
            scores += [[r.task, r.split, row, r.metric, seed, v] for seed, v in enumerate(r.rows[row])]
            for metric, per_row in r.extra_metrics.items():
                scores += [[r.task, r.split, row, metric, seed, v] for seed, v in enumerate(per_row.get(row, []))]
            params += [[r.task, row, seed, learner, json.dumps(p, sort_keys=True)]
                       for seed, (p, learner) in enumerate(zip(r.params.get(row, []), r.learners.get(row, [])))]
        for row in order_rows(r.paper):
            paper += [[r.task, r.metric, row, seed, v] for seed, v in enumerate(r.paper[row])]
        missing += [[r.task, what, why] for what, why in r.not_computed.items()]
        for pattern, by_method in r.robustness.items():
            for method, values in by_method.items():
                robust += [[r.task, r.metric, pattern, method, seed, v] for seed, v in enumerate(floats(values))]
        recon += [[r.task, m, v] for m, v in r.reconstruction_cosine.items()]
        att += [[r.task, m, v] for m, v in r.attention.items()]
        for rate in sorted(r.attention_vs_mask_rate):
            att_rate += [[r.task, rate, m, v] for m, v in r.attention_vs_mask_rate[rate].items()]
        for split in ("train", "valid", "test"):
            datasets.append([r.task, r.split, split, r.n_molecules.get(split, ""), r.invalid_smiles.get(split, ""),
                             r.scaffold_overlap if split == "test" and r.scaffold_overlap is not None else ""])
    _csv(paths["table1"], ["task", "metric", "split", "row", "mean", "std", "n_seeds", "learner", "leaked"], table1)
    _csv(paths["scores"], ["task", "split", "row", "metric", "seed_index", "value"], scores)
    _csv(paths["robustness"], ["task", "metric", "pattern", "method", "seed_index", "value"], robust)
    _csv(paths["reconstruction"], ["task", "modality", "cosine"], recon)
    _csv(paths["attention"], ["task", "modality", "attention"], att)
    _csv(paths["attention_vs_mask_rate"], ["task", "mask_rate", "modality", "attention"], att_rate)
    _csv(paths["datasets"], ["task", "split_method", "split", "n_molecules", "n_invalid_smiles",
                             "test_scaffolds_in_train"], datasets)
    _csv(paths["params"], ["task", "row", "seed", "learner", "params"], params)
    _csv(paths["paper"], ["task", "metric", "row", "seed_index", "value"], paper)
    _csv(paths["not_computed"], ["task", "figure", "why"], missing)
