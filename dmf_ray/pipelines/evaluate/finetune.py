"""Fine-tuned fusion (issue 14): the pretrained fusion model plus a small head trained on the task's
labels end to end, with modality masking kept on so the predictor still works when modalities are
missing. Its row, ``fusion-finetuned``, goes in Table 1 and its robustness in Figure 2.

Recipe (one per seed): a copy of the fusion model and a linear head ``latent_dim -> T`` (one
output per label column); AdamW (lr ``1e-3``, weight decay ``1e-4``), mini-batches of 64 train
rows; each step hides present modalities with probability ``mask_p`` (``sample_training_mask``,
never all of a molecule's), as pretraining does. Loss: binary cross-entropy on the logits
(classification) or squared error on standardised targets (regression), over the labels present
(NaN labels are skipped). The epoch with the best valid metric is kept (early stopping after
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
    """A tuned ``FinetunedModel`` (a float32 copy of the fusion + a linear head) and how to undo
    the target standardisation: ``scale`` (mean, std), (0, 1) for classification."""

    def __init__(self, model: FinetunedModel, scale: tuple[float, float]):
        self.model, self.scale = model, scale


def _targets(data: TaskData, kind: str) -> tuple[np.ndarray, float, float]:
    """Train labels (standardised for regression) and the (mean, std) to undo it."""
    y = data.labels["train"].astype(np.float64)
    if kind == "classification":
        return y, 0.0, 1.0
    mean, std = float(np.nanmean(y)), float(np.nanstd(y)) or 1.0
    return (y - mean) / std, mean, std


def _outputs(model: FinetunedModel, data: TaskData, rows: np.ndarray, kind: str, scale: tuple[float, float],
             keep: np.ndarray | None = None) -> np.ndarray:
    import torch

    logits = predict_logits(model, data.batch.subset(rows), None if keep is None else keep[rows])
    if kind == "classification":
        return torch.sigmoid(torch.from_numpy(logits)).numpy()
    return logits * scale[1] + scale[0]


def predict(predictor: _Predictor, data: TaskData, rows: np.ndarray, kind: str, scale: tuple[float, float],
            keep: np.ndarray | None = None) -> np.ndarray:
    """Predictions float64 ``[len(rows), T]`` (probabilities or label units) with ``keep`` ``[N, M]``
    as the presence (default: the task's own)."""
    return _outputs(predictor.model, data, rows, kind, scale, keep)


def finetune(model, data: TaskData, seed: int, settings: FinetuneSettings = FinetuneSettings()
             ) -> tuple[_Predictor, tuple[float, float], int]:
    """Train a predictor on the task's train split (dmf_ray.model.finetune.fit_finetuned), keep
    the epoch best on valid. ``model`` is not changed (a copy is tuned).

    Returns (the predictor, the target scale (mean, std), the epoch kept, 1-based).
    """
    import torch

    kind = data.task.kind
    metric = _metrics.primary_metric(kind)
    torch.manual_seed(seed)
    head = Head(model.config.latent_dim, 0, data.labels["train"].shape[1])  # hidden=0: a linear head
    tuned = FinetunedModel(copy.deepcopy(model).float(), head)
    y_train, mean, std = _targets(data, kind)
    valid = data.split_of("valid")

    def score_valid(m: FinetunedModel) -> float:
        out = _outputs(m, data, valid, kind, (mean, std))
        return _metrics.score(data.labels["valid"], out, kind)[metric]

    opt = make_optimizer(tuned, settings.lr, settings.weight_decay)
    fit = fit_finetuned(tuned, opt, data.batch.subset(data.split_of("train")), y_train, score_valid,
                        epochs=settings.epochs, patience=settings.patience, batch_size=settings.batch_size,
                        mask_p=settings.mask_p, generator=torch.Generator().manual_seed(seed),
                        loss="bce" if kind == "classification" else "mse",
                        better=lambda a, b: _metrics.is_better(a, b, metric))
    return _Predictor(tuned, (mean, std)), (mean, std), fit.best_epoch


def run_finetune(run: TaskRun, settings: FinetuneSettings = FinetuneSettings()) -> None:
    """The ``fusion-finetuned`` row (every seed) and its Figure 2 robustness under every pattern."""
    data, result, kind = run.data, run.result, run.data.task.kind
    test = data.split_of("test")
    metric = _metrics.primary_metric(kind)
    for seed in run.seeds:
        predictor, scale, epoch = finetune(run.model, data, seed, settings)
        test_score = _metrics.score(data.labels["test"], predict(predictor, data, test, kind, scale), kind)
        result.add_fit(FINETUNED, {"test_metric": test_score[metric], "test": test_score, "learner": "finetune",
                                   "params": {**asdict(settings), "epoch_kept": epoch}})
        if not math.isfinite(test_score[metric]):
            result.not_computed.setdefault(f"Table 1: {FINETUNED}", f"{metric} undefined on the test split")
        for p in run.patterns:
            keep = run.test_keep(p, seed)
            degraded = predict(predictor, data, test, kind, scale, keep)
            result.add_robustness(p.name, "finetuned", _metrics.score(data.labels["test"], degraded, kind)[metric])
    run.log(f"[{result.task}] {FINETUNED:<24} {metric} {np.nanmean(result.rows[FINETUNED]):.3f} "
            f"({len(run.seeds)} seed(s))")


__all__ = ["FINETUNED", "FinetuneSettings", "finetune", "predict", "run_finetune"]
