"""One training step and one validation batch (used by the Ray workers and by plain loops)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dmf_ray.model import DynamicFusion, fusion_losses, reconstruction_cosine, sample_training_mask


# --------------------------------------------------------------------------------------------
# One training step and one validation batch (used by the Ray workers and by plain loops)
# --------------------------------------------------------------------------------------------


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build has it: on CPU the default per-tensor loop costs
    ~15x the fused kernel for this model (69 vs 5 ms a step at 4.3M parameters), as much as
    the forward and backward of a 128-sample batch."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _unwrap(model: torch.nn.Module) -> DynamicFusion:
    return model.module if hasattr(model, "module") else model  # DDP wraps the model


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Sequence[Tensor],
    present: Tensor,
    p: float,
    generator: torch.Generator | None = None,
    grad_clip: float = 0.0,
) -> tuple[dict[str, Tensor], Tensor]:
    """Mask with probability p, forward, Eq. 1 loss, backward, optimizer step.

    Returns the detached loss terms (no host sync: callers accumulate them on the device) and
    the bool [B, M] mask that was applied. `model` may be DDP-wrapped."""
    masked = sample_training_mask(present, p, generator)
    out = model(list(inputs), present, masked)
    losses = fusion_losses(_unwrap(model).config, out)
    # Zeroed in place, not set to None: under DDP with gradient_as_bucket_view the gradients are
    # views of the communication buckets, which None would throw away and reallocate every step.
    optimizer.zero_grad(set_to_none=False)
    losses["total"].backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return {k: v.detach() for k, v in losses.items()}, masked


@torch.no_grad()
def validation_sums(model: DynamicFusion, inputs: Sequence[Tensor], present: Tensor) -> dict[str, Tensor]:
    """Sums (so batches and ranks add up) for the validation metrics of one batch:

    attention      [M] sum of attention with every present modality visible, rows with input
    cos, cos_n     [M] leave-one-out reconstruction: hide modality m where it is present and
                   something else is, reconstruct it from the rest, cosine against the true
                   vector in the model's normalised space (dmf_ray.model.metrics, the one the
                   server and dmf evaluate use); sum and count
    loss, loss_n   Eq. 1 total of those leave-one-out passes, weighted by their rows
    """
    was_training = model.training
    model.eval()
    try:
        inputs = list(inputs)
        M = len(inputs)
        full = model(inputs, present)
        sums = {
            "attention": full.attention.float().sum(0),
            "rows": full.has_input.float().sum().reshape(1),
        }
        cos = torch.zeros(M, dtype=torch.float64, device=present.device)
        cos_n = torch.zeros(M, device=present.device)
        loss = torch.zeros(1, device=present.device)
        loss_n = torch.zeros(1, device=present.device)
        others = present.sum(1) >= 2
        for m in range(M):
            rows = (present[:, m] & others).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            sub_present = present[rows]
            hide = torch.zeros_like(sub_present)
            hide[:, m] = True
            out = model([x[rows] for x in inputs], sub_present, hide)
            cos[m] = reconstruction_cosine(model, m, out.reconstructions[m], out.normalized_inputs[m],
                                           normalized=True).normalized.sum()
            cos_n[m] = rows.numel()
            loss += fusion_losses(model.config, out)["total"] * rows.numel()
            loss_n += rows.numel()
        sums.update(cos=cos, cos_n=cos_n, loss=loss, loss_n=loss_n)
        return sums
    finally:
        model.train(was_training)
