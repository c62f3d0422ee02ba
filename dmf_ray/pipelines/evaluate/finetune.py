"""Fine-tuned fusion (issue 14): the pretrained fusion model plus a small head trained on the task's
labels end to end, with modality masking kept on so the predictor still works when modalities are
missing. Its row, ``fusion-finetuned``, goes in Table 1 and its robustness in Figure 2.

Recipe (one per seed): a copy of the fusion model and a linear head ``latent_dim -> T`` (one
output per label column); AdamW (lr ``1e-3``, weight decay ``1e-4``), mini-batches of 64 train
rows; each step hides present modalities with probability ``mask_p`` (``sample_training_mask``,
never all of a molecule's), as pretraining does. Loss: binary cross-entropy on the logits
(classification) or squared error on targets standardised per label column (regression), over
the labels present (NaN labels are skipped; so are the columns the task lists as unfittable,
``Task.skipped_labels``: predicted NaN, as the Table 1 learners leave them). The epoch with the best valid metric is kept (early stopping after
``patience`` epochs without improvement). The decoders are not used. The head, the masked loop
and the best-on-valid selection are the core's (dmf_ray.model.finetune), shared with ``dmf finetune``;
this module adds the table wiring (target scaling, the task's metric, rows and robustness).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np

from dmf_ray.model.finetune import FinetunedModel, Head, fit_finetuned, make_optimizer, predict_logits
from dmf_ray.pipelines.evaluate import metrics as _metrics
from dmf_ray.pipelines.evaluate.table import TaskRun
from dmf_ray.pipelines.evaluate.taskdata import TaskData

FINETUNED = "fusion-finetuned"


@dataclass(frozen=True)
class FinetuneSettings:
    """Training settings of the fine-tuned predictor (see the module docstring)."""

    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    mask_p: float = 0.3
    patience: int = 5


class _Predictor:
    """A tuned ``FinetunedModel`` (a float32 copy of the fusion + a linear head) and how to read
    its outputs: ``mean``, ``std`` float64 ``[T]`` undo the per-column target standardisation
    (0 and 1 for classification); ``skipped`` bool ``[T]`` marks the label columns no learner
    can fit (``Task.skipped_labels``): not trained on, predicted NaN, so the metrics skip them
    as they do for the Table 1 learners."""

    def __init__(self, model: FinetunedModel, mean: np.ndarray, std: np.ndarray, skipped: np.ndarray):
        self.model, self.mean, self.std, self.skipped = model, mean, std, skipped

    def outputs(self, data: TaskData, rows: np.ndarray, kind: str, keep: np.ndarray | None = None) -> np.ndarray:
        """Predictions float64 ``[len(rows), T]``: probabilities or label units."""
        import torch

        logits = predict_logits(self.model, data.batch.subset(rows), None if keep is None else keep[rows])
        out = (torch.sigmoid(torch.from_numpy(logits)).numpy() if kind == "classification"
               else logits * self.std + self.mean)
        out[:, self.skipped] = np.nan
        return out


def _skipped(data: TaskData) -> np.ndarray:
    """bool ``[T]``: the label columns the task lists as unfittable."""
    names = set(getattr(data.task, "skipped_labels", {}))
    return np.array([c in names for c in data.task.label_names], dtype=bool)


def _scaling(y: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per label column (mean, std), float64 ``[T]`` each, of the train labels ``y`` ``[n, T]``
    (NaN skipped): each regression target is standardised on its own, so a wide target does
    not dominate the squared error of the others; (0, 1) for classification and for a column
    without labels; std 1 for a constant column."""
    n_cols = y.shape[1]
    if kind == "classification":
        return np.zeros(n_cols), np.ones(n_cols)
    known = ~np.isnan(y)
    count = known.sum(axis=0)
    filled = np.where(known, y, 0.0)
    mean = filled.sum(axis=0) / np.maximum(count, 1)
    std = np.sqrt((np.where(known, y - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count, 1))
    return mean, np.where(std > 0, std, 1.0)


def predict(predictor: _Predictor, data: TaskData, rows: np.ndarray, kind: str,
            keep: np.ndarray | None = None) -> np.ndarray:
    """Predictions float64 ``[len(rows), T]`` (probabilities or label units) with ``keep`` ``[N, M]``
    as the presence (default: the task's own); NaN in the columns the task skips."""
    return predictor.outputs(data, rows, kind, keep)


def finetune(model, data: TaskData, seed: int, settings: FinetuneSettings = FinetuneSettings()
             ) -> tuple[_Predictor, int]:
    """Train a predictor on the task's train split (dmf_ray.model.finetune.fit_finetuned), keep
    the epoch best on valid. ``model`` is not changed (a copy is tuned).

    Returns (the predictor, the epoch kept, 1-based).
    """
    import torch

    kind = data.task.kind
    metric = _metrics.primary_metric(kind)
    torch.manual_seed(seed)
    y = data.labels["train"].astype(np.float64)
    head = Head(model.config.latent_dim, 0, y.shape[1])  # hidden=0: a linear head
    predictor = _Predictor(FinetunedModel(copy.deepcopy(model).float(), head), *_scaling(y, kind), _skipped(data))
    y_train = (y - predictor.mean) / predictor.std
    y_train[:, predictor.skipped] = np.nan  # not trained on, as the Table 1 learners skip them
    valid = data.split_of("valid")

    def score_valid(m: FinetunedModel) -> float:
        return _metrics.score(data.labels["valid"], predictor.outputs(data, valid, kind), kind)[metric]

    opt = make_optimizer(predictor.model, settings.lr, settings.weight_decay)
    fit = fit_finetuned(predictor.model, opt, data.batch.subset(data.split_of("train")), y_train, score_valid,
                        epochs=settings.epochs, patience=settings.patience, batch_size=settings.batch_size,
                        mask_p=settings.mask_p, generator=torch.Generator().manual_seed(seed),
                        loss="bce" if kind == "classification" else "mse",
                        better=lambda a, b: _metrics.is_better(a, b, metric))
    return predictor, fit.best_epoch


def run_finetune(run: TaskRun, settings: FinetuneSettings = FinetuneSettings()) -> None:
    """The ``fusion-finetuned`` row (every seed) and its Figure 2 robustness under every pattern."""
    data, result, kind = run.data, run.result, run.data.task.kind
    test = data.split_of("test")
    metric = _metrics.primary_metric(kind)
    for seed in run.seeds:
        predictor, epoch = finetune(run.model, data, seed, settings)
        test_score = _metrics.score(data.labels["test"], predict(predictor, data, test, kind), kind)
        result.add_fit(FINETUNED, {"test_metric": test_score[metric], "test": test_score, "learner": "finetune",
                                   "params": {**asdict(settings), "epoch_kept": epoch}})
        if not math.isfinite(test_score[metric]):
            result.not_computed.setdefault(f"Table 1: {FINETUNED}", f"{metric} undefined on the test split")
        for p in run.patterns:
            keep = run.test_keep(p, seed)
            degraded = predict(predictor, data, test, kind, keep)
            result.add_robustness(p.name, "finetuned", _metrics.score(data.labels["test"], degraded, kind)[metric])
    run.log(f"[{result.task}] {FINETUNED:<24} {metric} {np.nanmean(result.rows[FINETUNED]):.3f} "
            f"({len(run.seeds)} seed(s))")


__all__ = ["FINETUNED", "FinetuneSettings", "finetune", "predict", "run_finetune"]
