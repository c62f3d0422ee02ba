"""One task's rows aligned with their features, and the feature matrices the learners see.

Rows are train, valid and test stacked in that order; every feature matrix built here has one
row per task row, so a split is a fixed slice of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from dmf_ray.modalities import ModalityBatch
from dmf_ray.pipelines.evaluate.features import FeaturizedSmiles
from dmf_ray.pipelines.evaluate.tasks import SPLITS, Task


@dataclass
class TaskData:
    """One task's rows (train, valid, test stacked) aligned with their features.

    ``batch``: the task's rows as the one batch type (``values[m]`` ``[N, d_m]`` in the encoder's
    dtype, zero where absent; ``present`` ``[N, M]``; ``mol_ids`` None where the SMILES did not
    parse); ``slices``: the rows of each split; labels come from ``task`` (float64
    ``[n_split, T]``, NaN for a missing label).
    """

    task: Task
    batch: ModalityBatch
    slices: dict[str, slice]

    @property
    def modalities(self) -> list[str]:
        """The M modality names, in the order of ``present``'s columns."""
        return self.batch.names

    @property
    def values(self) -> dict[str, np.ndarray]:
        """``{m: [N, d_m]}`` raw vectors."""
        return self.batch.values

    @property
    def present(self) -> np.ndarray:
        """``[N, M]`` bool presence."""
        return self.batch.present

    @property
    def mol_ids(self) -> np.ndarray:
        """``[N]`` molecule ids (None where the SMILES did not parse)."""
        return self.batch.mol_ids

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """``{split: [n_split, T] float64}``, NaN for a missing label."""
        return self.task.labels

    @property
    def n(self) -> int:
        """Number of rows, all splits together."""
        return len(self.present)

    def split_of(self, split: str) -> np.ndarray:
        """Row indices (int64) of ``split`` (``train``/``valid``/``test``)."""
        s = self.slices[split]
        return np.arange(s.start, s.stop)

    def splits_of(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, valid, test) slices of a matrix with one row per task row."""
        return X[self.slices["train"]], X[self.slices["valid"]], X[self.slices["test"]]

    def counts(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """(rows with no modality per split, absent entries per modality and split)."""
        featureless = {s: int((~self.present[self.slices[s]].any(axis=1)).sum()) for s in SPLITS}
        absent = {m: {s: int((~self.present[self.slices[s], j]).sum()) for s in SPLITS}
                  for j, m in enumerate(self.modalities)}
        return featureless, absent


def task_data(task: Task, feats: FeaturizedSmiles) -> TaskData:
    """The rows of ``task`` picked out of the features of every task's molecules.

    Raises KeyError for a SMILES string ``feats`` was not computed for.
    """
    smiles = [s for split in SPLITS for s in task.smiles[split]]
    rows = feats.rows(smiles)
    slices, start = {}, 0
    for split in SPLITS:
        slices[split] = slice(start, start + len(task.smiles[split]))
        start += len(task.smiles[split])
    return TaskData(task=task, batch=feats.batch.subset(rows), slices=slices)


def block(data: TaskData, modalities: Sequence[str], keep: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Concatenated raw features float32 ``[len(rows), sum d_m]`` with NaN where ``keep`` ``[N, M]`` is False
    (the learner imputes them with the train column means)."""
    rows = np.arange(data.n) if rows is None else rows
    parts = []
    for m in modalities:
        j = data.modalities.index(m)
        x = data.values[m][rows].astype(np.float32)
        x[~keep[rows, j]] = np.nan
        parts.append(x)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def fused(model, data: TaskData, keep: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Fused vectors float32 ``[len(rows), latent_dim]`` from the modalities ``keep`` ``[N, M]`` marks;
    NaN rows where nothing is kept (imputed by the learner)."""
    from dmf_ray.inference import fuse

    rows = np.arange(data.n) if rows is None else rows
    vis = keep[rows]
    out = fuse(model, replace(data.batch.subset(rows), present=vis)).fused
    out[~vis.any(axis=1)] = np.nan
    return out
