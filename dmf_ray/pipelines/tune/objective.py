"""The downstream objective of ``dmf tune --task``: how useful a trial's fused vector is on named
classification tasks, scored at every epoch (so ASHA's rungs compare trials on the objective itself).

Per tune run (in the driver, before any trial): each task is loaded and the distinct SMILES of
its train and valid splits are encoded ONCE with the store's encoders (the modalities the trials
train on); the result is put in Ray's object store once. Per trial and epoch (in the trial's Ray
Train controller, on the checkpoint rank 0 just reported): the checkpoint's weights are loaded
into the trial's model, the task molecules are fused, and a logistic regression (the evaluate
workflow's ``logreg`` learner: StandardScaler + LogisticRegression, balanced classes, C chosen
on valid from 0.01 | 0.1 | 1) is fitted on train and scored on valid; the objective
``downstream/roc_auc`` is the unweighted mean over tasks of each task's valid ROC-AUC (itself
the mean over its label columns), ``downstream/roc_auc/<task>`` each task's.

Why every epoch rather than once after training: ASHA stops trials at its rungs on the reported
metric; a score computed only at the end would leave the rungs to the validation loss, a
different objective, which can stop the trial that would have scored best downstream. And it is
cheap next to an epoch: fusing a few thousand molecules and three logistic-regression fits on
latent-size features take well under a second (measured in tests/integration/test_tune.py's run).

Leakage: the objective reads the tasks' train and valid splits only; the test split is never
loaded into the objective (not encoded, not scored). The valid split, though, chooses the
trial, so any valid figure of these tasks for the tuned model is optimistic; their test figures
are not (dmf evaluate's test column stays an honest estimate).

The evaluate workflow's pieces (task loader, featurizer, learner) are handed in (``TaskEntry``),
as the train workflow is (``TrainingEntry``): no workflow imports another (issue 12).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmf_ray.modalities import ModalityBatch
from dmf_ray.pipelines.tune.config import DOWNSTREAM_METRIC

LEARNER = "logreg"
OBJECTIVE_SPLITS = ("train", "valid")  # the test split is never read by tune


@dataclass(frozen=True)
class TaskEntry:
    """The evaluate workflow's pieces as the downstream objective uses them, handed in by the caller
    (dmf_ray.cli.tune wires dmf_ray.pipelines.evaluate's public functions):

    ``parse_task(text)`` -> a spec with ``name`` and ``source`` from ``[NAME=]PATH`` or
    ``[NAME=]TRAIN,VALID,TEST`` (evaluate's ``TaskSpec.parse``: the same grammar as ``dmf
    evaluate --task``), raising ValueError;
    ``load_task(source, name=...)`` -> a task with ``kind``, ``label_names``, ``smiles[split]``
    (list of str) and ``labels[split]`` (float64 ``[n, T]``, NaN missing), raising ValueError or
    FileNotFoundError; ``featurize(smiles, specs, log=...)`` -> features with ``batch`` (a
    ModalityBatch, one row per distinct SMILES) and ``rows(smiles)`` (int64 row of each);
    ``fit_and_score(X_train, y_train, X_valid, y_valid, X_test, y_test, kind, learner=...,
    n_jobs=...)`` -> a dict with ``valid_metric``."""

    load_task: Callable[..., Any]
    featurize: Callable[..., Any]
    fit_and_score: Callable[..., Any]
    parse_task: Callable[[str], Any]


def load_objective_tasks(items: Sequence[str], entry: TaskEntry) -> tuple[list[Any], list[str]]:
    """(the loaded tasks, every problem): a task that cannot be loaded, is not a classification,
    or has a valid split no label column can be scored on (ROC-AUC needs both classes)."""
    tasks, problems = [], []
    for item in items:
        try:
            spec = entry.parse_task(str(item))
            name = spec.name
            task = entry.load_task(spec.source, name=name)
        except (ValueError, FileNotFoundError) as exc:
            problems.append(f"task {item}: {exc}")
            continue
        if task.kind != "classification":
            problems.append(f"task {name}: a {task.kind} task; the downstream objective is ROC-AUC (0/1 labels)")
            continue
        valid = np.asarray(task.labels["valid"], dtype=np.float64)
        scoreable = [np.unique(col[~np.isnan(col)]).size == 2 for col in valid.T]
        if not any(scoreable):
            problems.append(f"task {name}: no label column has both classes in its valid split "
                            f"({len(task.smiles['valid'])} rows): ROC-AUC is undefined there")
            continue
        tasks.append(task)
    return tasks, problems


@dataclass
class ObjectiveTask:
    """One task as the objective scores it: rows of ObjectiveData.batch and labels, train and valid."""

    name: str
    label_names: list[str]
    rows: dict[str, np.ndarray]  # split -> int64 [n_split] rows of ObjectiveData.batch
    labels: dict[str, np.ndarray]  # split -> float64 [n_split, T], NaN missing


@dataclass
class ObjectiveData:
    """What every trial scores with, built once per tune run: ``batch`` the distinct train and
    valid SMILES of every task encoded with the trials' modalities (zero and absent where an
    encoder failed or the SMILES did not parse), the tasks, and the learner function."""

    batch: ModalityBatch
    tasks: list[ObjectiveTask]
    fit_and_score: Callable[..., Any]
    seconds: float

    def describe(self) -> dict[str, Any]:
        """The JSON record of tune.json: tasks (rows per split, labels), learner, splits read."""
        return {"metric": DOWNSTREAM_METRIC, "learner": LEARNER, "splits_read": list(OBJECTIVE_SPLITS),
                "test_split": "never read (the valid split chooses the trial: valid figures of these tasks "
                              "are optimistic for the tuned model, test figures are not)",
                "tasks": {t.name: {"labels": t.label_names, **{s: int(len(r)) for s, r in t.rows.items()}}
                          for t in self.tasks},
                "molecules": len(self.batch), "featurize_seconds": round(self.seconds, 2)}


def prepare_objective(tasks: Sequence[Any], specs: Mapping[str, dict], entry: TaskEntry,
                      log: Callable[[str], None] = print) -> ObjectiveData:
    """Encode every distinct train/valid SMILES of ``tasks`` once with the encoders of ``specs``
    (modality -> encoder spec, as the store records it); runs in this process, no Ray."""
    started = time.perf_counter()
    smiles = [s for t in tasks for split in OBJECTIVE_SPLITS for s in t.smiles[split]]
    feats = entry.featurize(smiles, dict(specs), log=log)
    prepared = [ObjectiveTask(t.name, list(t.label_names),
                              {s: feats.rows(t.smiles[s]) for s in OBJECTIVE_SPLITS},
                              {s: np.asarray(t.labels[s], dtype=np.float64) for s in OBJECTIVE_SPLITS})
                for t in tasks]
    data = ObjectiveData(feats.batch, prepared, entry.fit_and_score, time.perf_counter() - started)
    empty = int((~feats.batch.present.any(axis=1)).sum())
    log(f"tune objective: {len(feats.batch):,} distinct train/valid molecules of {', '.join(t.name for t in tasks)} "
        f"encoded with {', '.join(specs)} in {data.seconds:.1f} s" + (
            f"; {empty} with no modality (their fused vector is imputed by the learner)" if empty else ""))
    return data


def objective_scores(model, data: ObjectiveData) -> dict[str, float]:
    """``{DOWNSTREAM_METRIC: mean, f"{DOWNSTREAM_METRIC}/<task>": valid ROC-AUC}`` of ``model``
    (a DynamicFusion over the modalities of ``data.batch``); NaN for a task whose valid split
    cannot be scored (the mean skips it)."""
    from dmf_ray.inference import fuse

    model.eval()
    fused = fuse(model, data.batch).fused
    fused[~data.batch.present.any(axis=1)] = np.nan  # nothing to fuse: imputed by the learner
    scores: dict[str, float] = {}
    for task in data.tasks:
        n_labels = task.labels["train"].shape[1]
        fit = data.fit_and_score(fused[task.rows["train"]], task.labels["train"],
                                 fused[task.rows["valid"]], task.labels["valid"],
                                 np.zeros((0, fused.shape[1]), np.float32), np.zeros((0, n_labels)),
                                 "classification", learner=LEARNER, n_jobs=1)
        scores[f"{DOWNSTREAM_METRIC}/{task.name}"] = float(fit["valid_metric"])
    values = [v for v in scores.values() if np.isfinite(v)]
    scores[DOWNSTREAM_METRIC] = float(np.mean(values)) if values else float("nan")
    return scores
