"""The training objective of Dynamic Multi-Modal Fusion (paper Eq. 1-6), from a FusionOutput.
Pure torch; every term in float32 even under autocast.

    Eq. 1  total = rec + lambda_a * align + lambda_d * div + lambda_e * ent + lambda_s * sparse
                   + lambda_r * self_rec (ours: lambda_r = 3 by default; 0 is the paper's objective)
    Eq. 2  rec     reconstruction of the masked modalities from the fused vector, with the
                   likelihood of each modality's value kind (``likelihoods``)
    Eq. 3  align   fused vector aligned with each visible modality's latent
    Eq. 4  div     gate diversity between modalities (squared linear CKA form)
    Eq. 5  ent     attention entropy (inverted: collapsed attention is penalised)
    Eq. 6  sparse  L1 of the gates
    ours   self_rec reconstruction of the visible modalities from the fused vector (Eq. 2's loss
                   over the visible pairs instead of the masked ones)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dmf_ray.model.fusion import FusionConfig, FusionOutput
from dmf_ray.model.likelihoods import element_loss

# The keys of fusion_losses' dict, in the order training logs them.
LOSS_TERMS = ("total", "reconstruction", "alignment", "diversity", "entropy", "sparsity", "self_reconstruction")

# Clamp for logs and denominators. Small enough to never bias a real value, large enough that
# float32 never underflows when it is squared or multiplied.
_TINY = 1e-12


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    # where, not multiply, so a stray non-finite value outside the mask cannot leak in; no
    # .item()/branching, so there is no host sync and an empty mask simply gives 0.
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp_min(1)


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    # Hand-rolled so a zero vector (an invisible row) gives cos 0 with a finite gradient.
    return (a * b).sum(-1) * torch.rsqrt(
        (a * a).sum(-1).clamp_min(_TINY) * (b * b).sum(-1).clamp_min(_TINY)
    )


def _centred_gram(G: Tensor, weight: Tensor) -> Tensor:
    # Centre over the selected samples only; unselected rows are zeroed so they drop out of K.
    n = weight.sum().clamp_min(1)
    mean = (G * weight[:, None]).sum(0, keepdim=True) / n
    Gc = (G - mean) * weight[:, None]
    return Gc @ Gc.T


def gate_similarity(g_i: Tensor, g_j: Tensor, weight: Tensor) -> Tensor:
    """The pairwise term of Eq. 4: squared linear CKA between two gate matrices [B, d_i], [B, d_j]
    over the samples with weight 1 (weight: float [B] of 0/1); a float scalar in [0, 1].

    cos(vec K_i, vec K_j)^2 with K = Gc Gc^T the centred Gram matrix across samples: 1 when the
    two modalities gate the batch in the same pattern, 0 when unrelated, for any d_i, d_j.
    Constant (zero-variance) gates give 0, never NaN.
    """
    K_i, K_j = _centred_gram(g_i, weight), _centred_gram(g_j, weight)
    num = (K_i * K_j).sum()
    den = (K_i * K_i).sum() * (K_j * K_j).sum()
    # Squared form avoids a sqrt (infinite gradient at 0); Cauchy-Schwarz keeps it in [0, 1].
    return num.square() / den.clamp_min(_TINY)


def _diversity(gates: list[Tensor], visible: Tensor) -> Tensor:
    """Eq. 4: mean over modality pairs of gate_similarity over the samples where both are
    visible; pairs with fewer than 2 such samples are skipped (no host sync: masked arithmetic)."""
    M = len(gates)
    div_sum = gates[0].new_zeros(())
    div_pairs = gates[0].new_zeros(())
    for i in range(M):
        for j in range(i + 1, M):
            both = visible[:, i] & visible[:, j]
            enough = both.sum() >= 2
            sim = gate_similarity(gates[i], gates[j], both.float())
            div_sum = div_sum + torch.where(enough, sim, 0.0)
            div_pairs = div_pairs + enough.float()
    return div_sum / div_pairs.clamp_min(1)


def _inverted_entropy(alpha: Tensor, visible: Tensor) -> Tensor:
    """Eq. 5 (inverted): mean of 1 - H(alpha) / log(n_visible) over samples with >= 2 visible."""
    n_visible = visible.sum(1)
    # clamp inside the log: a visible weight can underflow to 0 in float32, and 0 * log 0 = NaN.
    plogp = torch.where(visible, alpha * alpha.clamp_min(_TINY).log(), 0.0)
    norm_entropy = -plogp.sum(1) / n_visible.clamp_min(2).float().log()
    return _masked_mean(1.0 - norm_entropy, n_visible >= 2)


def _reconstruction_errors(config: FusionConfig, out: FusionOutput) -> Tensor:
    """[B, M] float32: each modality's mean per-element reconstruction loss (Eq. 2, see
    fusion_losses), in float32 even under autocast."""
    kinds = config.reconstruction_kinds
    if all(kind == "continuous" for kind in kinds):
        # The squared error on normalised values, exactly as before value kinds existed.
        return torch.stack(
            [(r.float() - x.float()).square().mean(-1)
             for r, x in zip(out.reconstructions, out.normalized_inputs)],
            1,
        )
    if out.targets is None or out.reconstruction_scales is None:
        raise ValueError("binary and count modalities need FusionOutput.targets and reconstruction_scales "
                         "(DynamicFusion.forward sets them)")
    errors = []
    for m, (kind, r, t) in enumerate(zip(kinds, out.reconstructions, out.targets)):
        err = element_loss(kind, r, t).mean(-1)
        errors.append(err if kind == "continuous" else err / out.reconstruction_scales[m].float())
    return torch.stack(errors, 1)


def fusion_losses(
    config: FusionConfig,
    out: FusionOutput,
    present: Tensor | None = None,
    masked: Tensor | None = None,
) -> dict[str, Tensor]:
    """Eq. 1: total = rec + la*align + ld*div + le*ent + ls*sparse (+ lr*self_rec), and each term
    (float32 scalars).

    The masks come from `out` (forward saw them). `present`/`masked` may be passed as well; they
    are then checked against `out`, which catches a forward that was given `present & ~masked` as
    its `present` (reconstruction targets would silently be zero).

    rec      (Eq. 2) mean over masked (sample, modality) pairs of the per-element loss of D_m(f)
             (a mean over d_m, so modalities of any dim weigh equally). With
             config.reconstruction "mse", or for a continuous modality: the squared error against
             the normalised x_m. Under "auto", binary and count modalities use the Bernoulli and
             Poisson losses of ``likelihoods.element_loss`` against the raw x_m, divided by
             ``out.reconstruction_scales`` (the loss of predicting the mean, so each modality
             weighs about as a z-scored one does). 0 when nothing is masked.
    align    (Eq. 3) mean over visible pairs of softplus(-cos(f, z_m)).
    div      (Eq. 4) mean over modality pairs of squared linear CKA between their gate patterns, over the
             samples where both are visible (pairs with < 2 such samples are skipped).
    ent      (Eq. 5) 1 - H(alpha) / log(n_visible), mean over samples with >= 2 visible modalities:
             0 for uniform attention, 1 for collapsed. The paper prints the entropy itself but
             states the intent "prevents attention collapse", which needs low entropy penalised.
    sparse   (Eq. 6) mean over visible pairs of ||g_m||_1 / d_m.
    self_reconstruction  (ours) rec's loss over the visible pairs: the fused vector keeps what each
             modality it saw says alone, not only what predicts the hidden ones (the paper's rec
             rewards only shared information); weight config.self_reconstruction_weight.

    Raises ValueError when `present`/`masked` disagree with what forward() saw, or when `out`
    has no reconstructions (forward(..., reconstruct=False)), or lacks the raw targets that a
    binary or count modality needs.
    """
    if present is not None and not torch.equal(present.to(out.present.device), out.present):
        raise ValueError("present differs from the mask forward() was given: call "
                         "model(inputs, present, masked), not model(inputs, visible)")
    if masked is not None:
        expected = out.present & ~masked.to(out.present.device)
        if not torch.equal(expected, out.visible):
            raise ValueError("masked differs from the mask forward() was given: call "
                             "model(inputs, present, masked)")
    if out.reconstructions is None:
        raise ValueError("fusion_losses needs reconstructions: call forward(..., reconstruct=True)")
    present, visible = out.present, out.visible
    hidden = present & ~visible

    errors = _reconstruction_errors(config, out)
    rec = _masked_mean(errors, hidden)
    self_rec = _masked_mean(errors, visible)

    fused = out.fused.float()
    cos = _cosine(fused.unsqueeze(1), out.latents.float())
    align = _masked_mean(F.softplus(-cos), visible)

    gates = [g.float() for g in out.gates]
    div = _diversity(gates, visible)
    ent = _inverted_entropy(out.attention.float(), visible)

    gate_l1 = torch.stack([g.mean(-1) for g in gates], 1)  # gates are > 0, so mean == L1 / d_m
    sparse = _masked_mean(gate_l1, visible)

    total = (
        rec
        + config.align_weight * align
        + config.diversity_weight * div
        + config.entropy_weight * ent
        + config.sparsity_weight * sparse
        + config.self_reconstruction_weight * self_rec
    )
    return dict(zip(LOSS_TERMS, (total, rec, align, div, ent, sparse, self_rec), strict=True))
