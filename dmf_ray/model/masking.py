"""Progressive modality masking (the paper's curriculum, Sec. 2.3): the schedule p(t) and the
per-step draw of which present modalities to hide. Pure torch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from dmf_ray.model.validation import ConfigError, ConfigModel, describe

MASK_SCHEDULE_KINDS = ("linear", "cosine", "step")


class MaskSchedule(ConfigModel):
    """Masking probability as a function of training progress in [0, 1] (the paper's curriculum).

    linear: straight line p_start -> p_end.  cosine: slow start and finish (half cosine).
    step: `steps` equal-length plateaus from p_start to p_end inclusive.
    Raises ConfigError (a ValueError) naming every bad field at once.
    """

    p_start: float = Field(0.1, ge=0.0, le=1.0, strict=True, allow_inf_nan=False,
                           description="masking probability at the start of training")
    p_end: float = Field(0.6, ge=0.0, le=1.0, strict=True, allow_inf_nan=False,
                         description="masking probability at the end of training")
    kind: Literal["linear", "cosine", "step"] = Field(
        "linear", description=f"masking schedule, one of {', '.join(MASK_SCHEDULE_KINDS)}")
    steps: int = Field(5, ge=2, strict=True, description="number of plateaus of the 'step' schedule")

    def probability(self, progress: float) -> float:
        """p(t) for progress t in [0, 1] (clamped; ValueError for NaN or inf)."""
        progress = float(progress)
        if not math.isfinite(progress):
            raise ValueError(f"progress must be a finite number in [0, 1], got {progress!r}")
        # Clamped rather than rejected: step/total overshoots by one on the last step of many loops.
        t = min(max(progress, 0.0), 1.0)
        if self.kind == "linear":
            frac = t
        elif self.kind == "cosine":
            frac = 0.5 * (1.0 - math.cos(math.pi * t))
        else:
            level = min(int(t * self.steps), self.steps - 1)
            frac = level / (self.steps - 1)
        return self.p_start + (self.p_end - self.p_start) * frac

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: Mapping) -> MaskSchedule:
        if not isinstance(data, Mapping):
            raise ConfigError(cls.__name__, [f"expected a mapping, got {type(data).__name__}"])
        return cls(**dict(data))


def sample_training_mask(
    present: Tensor, p: float, generator: torch.Generator | None = None
) -> Tensor:
    """Bool [B, M] of modalities to hide this step: each present one independently with prob p.

    Absent modalities are never masked. A sample is never left with nothing visible: if every
    present modality was drawn, one of them (uniformly at random) is revealed again, because a
    sample with no input gives a zero fused vector and nothing to learn from. A sample with one
    present modality is therefore never masked, and the realised rate for a sample with n present
    modalities is p - p**n / n (close to p once n is large).
    """
    if not isinstance(present, Tensor) or present.dtype != torch.bool or present.dim() != 2:
        raise ValueError(f"present must be a bool tensor [B, M], got {describe(present)}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"masking probability must be in [0, 1], got {p!r}")
    B, M = present.shape
    device = generator.device if generator is not None else present.device
    draws = torch.rand((2, B, M), generator=generator, device=device).to(present.device)
    masked = (draws[0] < p) & present
    all_hidden = present.any(1) & ~(present & ~masked).any(1)
    pick = torch.where(present, draws[1], -1.0).argmax(1)
    reveal = F.one_hot(pick, M).bool() & all_hidden.unsqueeze(1)
    return masked & ~reveal


