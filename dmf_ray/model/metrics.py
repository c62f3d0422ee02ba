"""The one reconstruction cosine: how well the decoder of modality m, fed the fused vector of the
OTHER modalities, recovers m's true embedding (the paper's Figure 3). Pure torch.

Used by the training validation (``val/cos/<m>`` in metrics.jsonl), by the server's
``/v1/reconstruct`` and by ``dmf evaluate``'s Figure 3, so for the same model and the same
molecules the three report the same number (tests/unit/test_model_metrics.py shows it).

Two spaces, whatever the reconstruction loss of the modality (``likelihoods``): the decoder's
output is first read in the modality's own units, as its expected value (a logit as the
probability sigmoid(logit), a log-rate as the expected count exp(log-rate); a z-scored output
un-standardised), so a model trained with the squared error and one trained with a Bernoulli or
Poisson likelihood are scored by the same yardstick:

normalised  each feature standardised with the statistics stored in the model (for the squared
            error, the space its loss is minimised in): predicting the training mean scores 0.
            The primary figure. Features whose std sits at the model's floor
            (``FusionConfig.std_floor``: constant in the data the statistics came from, in
            models not trained by ``dmf train``) are left out: dividing by the floor turns any
            deviation into ~1e6 and one such feature would decide the cosine.
raw         the encoders' own space; inflated by non-negative counts and large-scale
            descriptors (even the training mean scores ~0.7-0.99), so a secondary figure.

A row with no direction (all zero after the above) has nothing in common with anything: 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from dmf_ray.model.fusion import DynamicFusion
from dmf_ray.model.likelihoods import to_raw

# A std this close to the floor is the floor (set_normalization stores max(std, floor)).
_AT_FLOOR = 1.0001


class ReconstructionCosine(NamedTuple):
    """Per-row cosines, float64 [N] each (on the inputs' device)."""

    normalized: Tensor
    raw: Tensor


def row_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine between matching rows of a and b ([N, d] each), float64 [N]; 0 where a row of
    either is all zero. Computed in float64 so float32 inputs of any scale give the same value."""
    a, b = a.double(), b.double()
    num = (a * b).sum(-1)
    den = torch.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def _tensor(x, device=None) -> Tensor:
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = np.array(x)  # arrays that crossed a Ray object store are read-only; torch warns on them
    return torch.as_tensor(x, device=device)


def reconstruction_cosine(model: DynamicFusion, modality: str | int, reconstruction, target, *,
                          normalized: bool = False) -> ReconstructionCosine:
    """Row cosines between reconstructions and true embeddings of one modality, in the model's
    normalised space and in raw space (see the module doc for both).

    model: the DynamicFusion whose statistics define the normalised space (its buffers).
    modality: name or index in ``model.config.modalities``.
    reconstruction, target: [N, d_m] tensors or arrays (any float dtype): in raw input space, as
    ``inference.fuse_arrays(..., with_reconstructions=True)`` returns them, or with
    ``normalized=True`` as ``FusionOutput`` holds them: the decoder's output
    (``FusionOutput.reconstructions``: z-scored, logits or log-rates by
    ``config.reconstruction_kinds``) and the normalised target (``FusionOutput.normalized_inputs``).
    Raises ValueError for an unknown modality or shapes other than [N, d_m].
    """
    names = model.config.modalities
    if isinstance(modality, str):
        if modality not in names:
            raise ValueError(f"unknown modality {modality!r} (known: {names})")
        j = names.index(modality)
    else:
        j = int(modality)
    device = reconstruction.device if isinstance(reconstruction, Tensor) else None
    rec, tgt = _tensor(reconstruction, device), _tensor(target, device)
    dim = model.config.dims[j]
    for label, x in (("reconstruction", rec), ("target", tgt)):
        if x.dim() != 2 or x.shape[1] != dim or x.shape[0] != rec.shape[0]:
            raise ValueError(f"{label} of {names[j]!r} must be [N, {dim}] like the other, got {tuple(x.shape)}")
    norm = model.normalizers[j]
    mean = norm.mean.detach().to(rec.device, torch.float64)
    std = norm.std.detach().to(rec.device, torch.float64).clamp_min(norm.floor)
    kind = model.config.reconstruction_kinds[j]
    if normalized and kind == "continuous":
        rec_n, tgt_n = rec.double(), tgt.double()
        rec_raw, tgt_raw = rec_n * std + mean, tgt_n * std + mean
    elif normalized:
        rec_raw, tgt_raw = to_raw(kind, rec.double(), mean, std), tgt.double() * std + mean
        rec_n, tgt_n = (rec_raw - mean) / std, (tgt_raw - mean) / std
    else:
        rec_raw, tgt_raw = rec.double(), tgt.double()
        rec_n, tgt_n = (rec_raw - mean) / std, (tgt_raw - mean) / std
    informative = std > norm.floor * _AT_FLOOR
    return ReconstructionCosine(row_cosine(rec_n[:, informative], tgt_n[:, informative]),
                                row_cosine(rec_raw, tgt_raw))


def mean_cosine(cosines: Tensor) -> float:
    """The mean of per-row cosines as a float; NaN for no rows (nothing was reconstructed)."""
    return float(cosines.double().mean()) if cosines.numel() else float("nan")


def roc_auc_per_column(labels, scores) -> list[float]:
    """ROC-AUC (sklearn.metrics.roc_auc_score, scikit-learn 1.x) of each label column over the rows
    where both its label and its score are present (not NaN); NaN for a column without both
    classes there (undefined). ``labels`` 0/1 and ``scores`` float, ``[n, T]`` each (``[n]`` is
    one column). The one NaN-masked ROC-AUC: ``dmf evaluate``'s metrics and ``dmf finetune``'s
    valid/test score average its finite values (the MoleculeNet convention)."""
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    y, p = (y[:, None], p[:, None]) if y.ndim == 1 else (y, p)
    if y.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"labels and scores must be [n, T] of one shape, got {y.shape} and {p.shape}")
    out = []
    for t in range(y.shape[1]):
        known = ~np.isnan(y[:, t]) & ~np.isnan(p[:, t])
        both = np.unique(y[known, t]).size == 2
        out.append(float(roc_auc_score(y[known, t], p[known, t])) if both else float("nan"))
    return out
