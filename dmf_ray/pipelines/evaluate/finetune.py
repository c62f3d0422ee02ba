"""Fine-tuned fusion (issue 14): the pretrained fusion model plus a small head trained on the task's
labels end to end, with modality masking kept on so the predictor still works when modalities are
missing. Its row, ``fusion-finetuned``, goes in Table 1 and its robustness in Figure 2.

Recipe (one per seed): a copy of the fusion model and a linear head ``latent_dim -> T`` (one
output per label column); AdamW (lr ``1e-3``, weight decay ``1e-4``), mini-batches of 64 train
rows; each step hides present modalities with probability ``mask_p`` (``sample_training_mask``,
never all of a molecule's), as pretraining does. Loss: binary cross-entropy on the logits
(classification) or squared error on standardised targets (regression), over the labels present
(NaN labels are skipped). The epoch with the best valid metric is kept (early stopping after
``patience`` epochs without improvement). The decoders are not used.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np

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
    """Fusion model + linear head; ``logits(batch rows)`` ``[n, T]`` float32 tensors."""

    def __init__(self, model, n_tasks: int):
        import torch

        self.fusion = copy.deepcopy(model).float().train()
        self.head = torch.nn.Linear(model.config.latent_dim, n_tasks)
        self.parameters = list(self.fusion.parameters()) + list(self.head.parameters())

    def logits(self, inputs: list, present, masked=None):
        return self.head(self.fusion(inputs, present, masked, reconstruct=False).fused)

    def state(self) -> tuple[dict, dict]:
        return copy.deepcopy(self.fusion.state_dict()), copy.deepcopy(self.head.state_dict())

    def load(self, state: tuple[dict, dict]) -> None:
        self.fusion.load_state_dict(state[0])
        self.head.load_state_dict(state[1])


def _tensors(data: TaskData, rows: np.ndarray, keep: np.ndarray | None = None) -> tuple[list, object]:
    """(raw inputs per modality [n, d_m] float32, presence [n, M] bool) of ``rows``."""
    import torch

    present = (data.present if keep is None else keep)[rows]
    return ([torch.as_tensor(np.asarray(data.values[m][rows], dtype=np.float32)) for m in data.modalities],
            torch.as_tensor(present))


def _targets(data: TaskData, kind: str) -> tuple[np.ndarray, float, float]:
    """Train labels (standardised for regression) and the (mean, std) to undo it."""
    y = data.labels["train"].astype(np.float64)
    if kind == "classification":
        return y, 0.0, 1.0
    mean, std = float(np.nanmean(y)), float(np.nanstd(y)) or 1.0
    return (y - mean) / std, mean, std


def predict(predictor: _Predictor, data: TaskData, rows: np.ndarray, kind: str, scale: tuple[float, float],
            keep: np.ndarray | None = None) -> np.ndarray:
    """Predictions float64 ``[len(rows), T]`` (probabilities or label units) with ``keep`` ``[N, M]``
    as the presence (default: the task's own)."""
    import torch

    inputs, present = _tensors(data, rows, keep)
    predictor.fusion.eval()
    with torch.no_grad():
        out = predictor.logits(inputs, present).double()
    predictor.fusion.train()
    out = torch.sigmoid(out) if kind == "classification" else out * scale[1] + scale[0]
    return out.numpy()


def finetune(model, data: TaskData, seed: int, settings: FinetuneSettings = FinetuneSettings()
             ) -> tuple[_Predictor, tuple[float, float], int]:
    """Train a predictor on the task's train split, keep the epoch best on valid.

    Returns (the predictor, the target scale (mean, std), the epoch kept, 1-based).
    """
    import torch

    from dmf_ray.model import sample_training_mask

    kind = data.task.kind
    metric = _metrics.primary_metric(kind)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    predictor = _Predictor(model, data.labels["train"].shape[1])
    y_all, mean, std = _targets(data, kind)
    opt = torch.optim.AdamW(predictor.parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    train = data.split_of("train")
    best, best_epoch, since = None, 0, 0
    for epoch in range(1, settings.epochs + 1):
        order = torch.randperm(len(train), generator=gen).numpy()
        for start in range(0, len(train), settings.batch_size):
            positions = order[start:start + settings.batch_size]  # within the train split
            inputs, present = _tensors(data, train[positions])
            masked = sample_training_mask(present, settings.mask_p, generator=gen)
            y = torch.as_tensor(y_all[positions])
            loss = _loss(predictor.logits(inputs, present, masked).double(), y, kind)
            if loss is None:
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
        valid = _metrics.score(data.labels["valid"], predict(predictor, data, data.split_of("valid"), kind,
                                                             (mean, std)), kind)[metric]
        if best is None or _metrics.is_better(valid, best[0], metric):
            best, best_epoch, since = (valid, predictor.state()), epoch, 0
        else:
            since += 1
            if since >= settings.patience:
                break
    predictor.load(best[1])
    return predictor, (mean, std), best_epoch


def _loss(out, y, kind: str):
    """Mean loss over the present labels of a batch (None when the batch has none)."""
    import torch

    labelled = ~torch.isnan(y)
    if not labelled.any():
        return None
    if kind == "classification":
        return torch.nn.functional.binary_cross_entropy_with_logits(out[labelled], y[labelled])
    return ((out[labelled] - y[labelled]) ** 2).mean()


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
