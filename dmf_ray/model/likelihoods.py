"""The reconstruction likelihood of each kind of modality (paper Eq. 2, per value kind). Pure torch.

The paper's Eq. 2 is a reconstruction error of x_m from the fused vector without naming the
error; a squared error on standardised values treats a 0/1 fingerprint bit or a sparse count
like a Gaussian variable. For such data the usual decoder is a Bernoulli or Poisson likelihood
on the raw values (the Bernoulli decoder of Kingma & Welling 2014, "Auto-Encoding Variational
Bayes", App. C.1; Poisson for counts as in generalised linear models). What the decoder D_m(f)
outputs, and what it is compared with, per kind:

kind        decoder output   target                   per-element loss (torch 2.13)
continuous  z-scored value   (x - mean) / std         (out - t)^2, as before
binary      logit            x in {0, 1}              F.binary_cross_entropy_with_logits(out, x)
count       log-rate         x in {0, 1, 2, ...}      F.poisson_nll_loss(out, x, log_input=True,
                                                      full=False) - (x - x log x)

The count loss is torch's Poisson NLL minus its value at the perfect rate (x itself), i.e. half
the Poisson unit deviance: the same gradient, 0 for a perfect reconstruction like the other two
(the binary one is already 0 there).

Weighting between modalities. Every loss is a per-element mean (so a modality's dim does not set
its weight), divided by ``baseline``: the per-element loss of predicting the training mean.
For z-scored continuous values that is 1 by construction, which is what made the squared error
weigh every modality about equally; without the division the ECFP Poisson loss of a 10,000
molecule ZINC sample starts at 0.064 per element against ~1 for rdkit2d. The division is by the
mean over features of the per-feature baselines (not a mean of ratios, which would give a bit set
in one molecule in 10,000 a weight of ~1,000).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

VALUE_KINDS = ("binary", "count", "continuous")
ValueKind = Literal["binary", "count", "continuous"]

# A decoder that starts by predicting a bit set in none (or all) of the training rows gets a
# logit of +-9.2 and a count never seen a rate of 1e-4, not +-inf.
_P_CLAMP = 1e-4
# exp() of a float32 log-rate overflows above ~88; a count above e^20 (uint8 counts stop at 255)
# is no prediction anyone can use.
_MAX_LOG_RATE = 20.0
# Terms of the Poisson series for the count baseline: counts are stored as uint8 (<= 255), so
# the mass of Poisson(mu <= 255) beyond 512 is negligible.
_SERIES = 512


def element_loss(kind: str, output: Tensor, target: Tensor) -> Tensor:
    """Per-element reconstruction loss [B, d] (float32) of decoder ``output`` [B, d] against
    ``target`` [B, d] (z-scored for continuous, raw 0/1 or counts otherwise); see the module doc.

    Raises ValueError for an unknown kind."""
    output, target = output.float(), target.float()
    if kind == "continuous":
        return (output - target).square()
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(output, target, reduction="none")
    if kind == "count":
        nll = F.poisson_nll_loss(output, target, log_input=True, full=False, reduction="none")
        return nll - (target - torch.special.xlogy(target, target))
    raise ValueError(f"unknown value kind {kind!r} (expected one of {VALUE_KINDS})")


def to_raw(kind: str, output: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Decoder ``output`` [N, d] in the modality's own units: the expected value of the
    predicted distribution (probability of a 1, expected count, or the un-standardised value;
    ``mean``/``std`` [d] are the model's normalisation statistics, used for continuous only)."""
    if kind == "continuous":
        return output * std + mean
    if kind == "binary":
        return torch.sigmoid(output)
    if kind == "count":
        return torch.exp(output.clamp_max(_MAX_LOG_RATE))
    raise ValueError(f"unknown value kind {kind!r} (expected one of {VALUE_KINDS})")


def mean_output(kind: str, mean: Tensor) -> Tensor | None:
    """The decoder output [d] that predicts the training ``mean`` [d]: logit(p) for binary,
    log(mu) for count; None for continuous (its z-scored mean is 0, where a decoder starts
    anyway). Used to start the decoder's output bias there, as a z-scored decoder starts."""
    if kind == "binary":
        return torch.logit(mean.clamp(_P_CLAMP, 1 - _P_CLAMP))
    if kind == "count":
        return mean.clamp_min(_P_CLAMP).log()
    return None


def _poisson_baseline(mu: Tensor) -> Tensor:
    # E[x log x] - mu log mu for x ~ Poisson(mu): half the expected unit deviance of the
    # constant prediction mu (the data's own dispersion is not in the stored moments).
    k = torch.arange(_SERIES, dtype=torch.float64, device=mu.device)
    log_pmf = torch.special.xlogy(k, mu[:, None]) - mu[:, None] - torch.lgamma(k + 1)
    e_xlogx = (log_pmf.exp() * torch.special.xlogy(k, k)).sum(-1)
    return (e_xlogx - torch.special.xlogy(mu, mu)).clamp_min(0.0)


def baseline(kind: str, mean: Tensor) -> float:
    """The per-element loss of predicting the training ``mean`` [d], averaged over features: what
    the modality's loss is divided by (see the module doc). 1 for continuous; for binary the
    mean Bernoulli entropy H(p) (nats); for count the mean of E[x log x] - mu log mu under
    Poisson(mu). A modality whose every feature is constant gets 1 (nothing to weigh)."""
    if kind == "continuous":
        return 1.0
    mean = mean.detach().double().cpu()
    if kind == "binary":
        p = mean.clamp(0.0, 1.0)
        per_feature = -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))
    elif kind == "count":
        per_feature = _poisson_baseline(mean.clamp_min(0.0))
    else:
        raise ValueError(f"unknown value kind {kind!r} (expected one of {VALUE_KINDS})")
    value = float(per_feature.mean()) if per_feature.numel() else 0.0
    return value if value > 0 and math.isfinite(value) else 1.0
