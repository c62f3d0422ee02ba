"""Fine-tuning core (issue 14): a pretrained DynamicFusion plus a small head, trained on a task's
labels with modality masking kept on. Pure torch: no I/O, no Ray. Both the ``dmf finetune``
workflow (dmf_ray.pipelines.finetune: model directory, Predictor, robustness) and evaluate's
``fusion-finetuned`` row (dmf_ray.pipelines.evaluate.finetune) train through ``fit_finetuned``.

Shapes and dtypes used throughout:
    batch    dmf_ray.modalities.ModalityBatch over the fusion's modalities, N rows
             (``values[m]`` ``[N, d_m]`` any numeric dtype, cast to float32; ``present`` ``[N, M]`` bool)
    targets  float ``[N, T]``, NaN = missing label (skipped by the loss)
    logits   float32 tensors ``[B, T]`` from the model; float64 numpy ``[N, T]`` from ``predict_logits``

Each step hides present modalities with probability ``mask_p``
(dmf_ray.model.sample_training_mask, never all of a molecule's), as pretraining does. Loss:
``"bce"`` = binary cross-entropy on the logits (torch.nn.functional.binary_cross_entropy_with_logits),
``"mse"`` = squared error (for targets the caller standardised), both over the labels present.
The epoch whose valid score (caller's ``score_valid``) is best is kept; training stops after
``patience`` epochs without improvement.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmf_ray.model.fusion import DynamicFusion
from dmf_ray.model.masking import sample_training_mask
from dmf_ray.modalities import ModalityBatch

LOSSES = ("bce", "mse")


class Head(nn.Module):
    """fused ``[B, d]`` float32 -> logits ``[B, T]``: Linear, ReLU, Dropout, Linear; with
    ``hidden=0`` a single Linear (evaluate's linear head)."""

    def __init__(self, latent_dim: int, hidden: int, n_outputs: int, dropout: float = 0.0):
        super().__init__()
        self.latent_dim, self.hidden, self.n_outputs, self.dropout = latent_dim, hidden, n_outputs, float(dropout)
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, n_outputs))
        else:
            self.net = nn.Sequential(nn.Linear(latent_dim, n_outputs))

    def spec(self) -> dict[str, Any]:
        """The constructor's arguments (a model card stores them to rebuild the head)."""
        return {"latent_dim": self.latent_dim, "hidden": self.hidden, "n_outputs": self.n_outputs,
                "dropout": self.dropout}

    def forward(self, fused: Tensor) -> Tensor:
        return self.net(fused)


class FinetunedModel(nn.Module):
    """DynamicFusion + Head. ``forward(inputs, present, masked)`` -> logits float32 ``[B, T]``.

    ``inputs``: M float32 tensors ``[B, d_m]`` in the fusion's modality order; ``present``/``masked``
    bool ``[B, M]`` (masked: present but hidden, as in training; a withheld modality is simply
    not present). A row with nothing visible gets the head's output for a zero fused vector."""

    def __init__(self, fusion: DynamicFusion, head: Head):
        super().__init__()
        self.fusion = fusion
        self.head = head

    @property
    def modalities(self) -> list[str]:
        return list(self.fusion.config.modalities)

    def forward(self, inputs: Sequence[Tensor], present: Tensor, masked: Tensor | None = None) -> Tensor:
        return self.head(self.fusion(list(inputs), present, masked, reconstruct=False).fused)


def make_optimizer(model: FinetunedModel, lr: float, weight_decay: float,
                   fusion_lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW (torch.optim.AdamW) over the head (``lr``) and the fusion (``fusion_lr``, default
    ``lr``; ``0`` freezes the fusion: requires_grad off, not in the optimizer)."""
    fusion_lr = lr if fusion_lr is None else fusion_lr
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    if fusion_lr > 0:
        groups.append({"params": list(model.fusion.parameters()), "lr": fusion_lr})
    else:
        model.fusion.requires_grad_(False)
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def _inputs(model: FinetunedModel, values: dict[str, np.ndarray], rows) -> list[Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(values[m][rows])) for m in model.modalities]


@torch.no_grad()
def predict_logits(model: FinetunedModel, batch: ModalityBatch, present: np.ndarray | None = None,
                   batch_size: int = 1024) -> np.ndarray:
    """Logits float64 ``[N, T]`` in eval mode (the model's mode is restored). ``present`` bool
    ``[N, M]`` overrides the batch's presence (a modality withheld = not present)."""
    was_training = model.training
    model.eval()
    values = batch.float32()
    present = batch.present if present is None else np.asarray(present, dtype=bool)
    parts = []
    for start in range(0, len(batch), batch_size):
        rows = slice(start, start + batch_size)
        parts.append(model(_inputs(model, values, rows), torch.from_numpy(present[rows])).double().numpy())
    model.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, model.head.n_outputs))


def masked_epoch(model: FinetunedModel, optimizer: torch.optim.Optimizer, batch: ModalityBatch,
                 targets: np.ndarray, *, batch_size: int, mask_p: float, generator: torch.Generator,
                 loss: str = "bce") -> float:
    """One shuffled pass over ``batch`` with modality masking on; the mean step loss (0.0 when no
    mini-batch had a label). Mini-batches without any label are skipped."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    model.train()
    values, present = batch.float32(), torch.from_numpy(np.asarray(batch.present, dtype=bool))
    labels = torch.as_tensor(np.asarray(targets, dtype=np.float32))
    order = torch.randperm(len(labels), generator=generator)
    total, steps = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        y = labels[idx]
        known = ~torch.isnan(y)
        if not known.any():
            continue
        masked = sample_training_mask(present[idx], mask_p, generator=generator)
        out = model(_inputs(model, values, idx.numpy()), present[idx], masked)
        if loss == "bce":
            step_loss = F.binary_cross_entropy_with_logits(out[known], y[known])
        else:
            step_loss = ((out[known] - y[known]) ** 2).mean()
        optimizer.zero_grad()
        step_loss.backward()
        optimizer.step()
        total, steps = total + float(step_loss.detach()), steps + 1
    return total / max(steps, 1)


@dataclass
class FitResult:
    """``best_epoch`` 1-based (the last epoch when no valid score was defined); ``best_score``
    None then; ``history``: per epoch ``{"epoch", "train_loss", "valid"}``."""

    best_epoch: int
    best_score: float | None
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)


def _higher(a: float, b: float) -> bool:
    return a > b


def fit_finetuned(model: FinetunedModel, optimizer: torch.optim.Optimizer, train: ModalityBatch,
                  targets: np.ndarray, score_valid: Callable[[FinetunedModel], float | None], *,
                  epochs: int, patience: int, batch_size: int, mask_p: float, generator: torch.Generator,
                  loss: str = "bce", better: Callable[[float, float], bool] = _higher,
                  on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Train ``model`` in place for at most ``epochs`` masked epochs (``masked_epoch``); after each,
    ``score_valid(model)`` (None or NaN = undefined, never an improvement); the weights of the
    best epoch (``better(new, best)``, default higher is better) are loaded back at the end.
    Stops after ``patience`` epochs without improvement. ``targets`` ``[len(train), T]``."""
    best: tuple[float, int, dict] | None = None
    history: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        train_loss = masked_epoch(model, optimizer, train, targets, batch_size=batch_size, mask_p=mask_p,
                                  generator=generator, loss=loss)
        score = score_valid(model)
        entry = {"epoch": epoch, "train_loss": train_loss, "valid": score}
        history.append(entry)
        if on_epoch is not None:
            on_epoch(entry)
        defined = score is not None and not np.isnan(score)
        if defined and (best is None or better(score, best[0])):
            best = (float(score), epoch, copy.deepcopy(model.state_dict()))
        elif best is not None and epoch - best[1] >= patience:
            break
    if best is not None:
        model.load_state_dict(best[2])
    return FitResult(best[1] if best else len(history), best[0] if best else None, len(history), history)


__all__ = ["LOSSES", "FinetunedModel", "FitResult", "Head", "fit_finetuned", "make_optimizer", "masked_epoch",
           "predict_logits"]
