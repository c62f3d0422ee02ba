"""Dynamic Multi-Modal Fusion: config, model, losses and the progressive masking schedule.

Pure torch: no file I/O (artifact.py) and no Ray (train.py), so all of it runs in a CPU unit test.

Shapes: B samples, M modalities (in config order), d_m the raw dim of modality m, d = latent_dim.
Three bool [B, M] masks appear throughout:
  present   the sample has an embedding for this modality at all (the store is partially paired)
  masked    present, but hidden from the model for this training step (progressive masking)
  visible   present & ~masked: what the model is allowed to look at
At inference nothing is masked, so visible == present.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Clamp for logs and denominators. Small enough to never bias a real value, large enough that
# float32 never underflows when it is squared or multiplied.
_TINY = 1e-12


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _raise_problems(what: str, problems: list[str]) -> None:
    # One message with every problem, so a bad config is fixed in one edit rather than N runs.
    if problems:
        raise ValueError(f"invalid {what}:\n  - " + "\n  - ".join(problems))


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class FusionConfig:
    """Everything needed to rebuild a DynamicFusion; JSON-serialisable via to_dict/from_dict.

    The paper gives no loss weights; the defaults keep reconstruction (the self-supervised signal
    that makes the fused vector informative about missing modalities) dominant and the
    regularisers an order of magnitude smaller.
    """

    modalities: list[str] = field(metadata={"help": "modality names; fixes the order of inputs"})
    dims: list[int] = field(metadata={"help": "raw embedding dim of each modality"})
    latent_dim: int = field(default=512, metadata={"help": "shared latent / fused vector dim"})
    gate_hidden: int = field(
        default=256, metadata={"help": "gate MLP hidden width (capped at the modality dim)"}
    )
    attention_hidden: int = field(default=128, metadata={"help": "attention scorer hidden width"})
    decoder_hidden: int = field(default=512, metadata={"help": "decoder MLP hidden width"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in gate and decoder MLPs"})
    std_floor: float = field(
        default=1e-6, metadata={"help": "normalisation std is max(std, std_floor)"}
    )
    align_weight: float = field(default=0.1, metadata={"help": "lambda_a, Eq. 3"})
    diversity_weight: float = field(default=0.05, metadata={"help": "lambda_d, Eq. 4 (CKA form)"})
    entropy_weight: float = field(default=0.05, metadata={"help": "lambda_e, Eq. 5 (inverted)"})
    sparsity_weight: float = field(default=0.01, metadata={"help": "lambda_s, Eq. 6"})

    def __post_init__(self) -> None:
        # YAML/CLI loaders hand over tuples; lists keep to_dict() -> JSON -> from_dict() exact.
        if isinstance(self.modalities, tuple):
            self.modalities = list(self.modalities)
        if isinstance(self.dims, tuple):
            self.dims = list(self.dims)
        self.validate()

    def validate(self) -> None:
        problems: list[str] = []
        mods, dims = self.modalities, self.dims
        if not isinstance(mods, list) or not mods:
            problems.append(f"modalities must be a non-empty list of names, got {mods!r}")
        else:
            for name in mods:
                if not isinstance(name, str) or not name.strip():
                    problems.append(f"modality name {name!r} must be a non-empty string")
            dupes = sorted({str(n) for n in mods if mods.count(n) > 1})
            if dupes:
                problems.append(f"modality names must be unique, repeated: {dupes}")
        if not isinstance(dims, list) or not dims:
            problems.append(f"dims must be a non-empty list of positive ints, got {dims!r}")
        else:
            bad = [d for d in dims if not (_is_int(d) and d > 0)]
            if bad:
                problems.append(f"dims must be positive ints, got bad values {bad!r}")
            if isinstance(mods, list) and len(mods) != len(dims):
                problems.append(
                    f"dims has {len(dims)} entries but modalities has {len(mods)}: {mods!r}"
                )
        for name in ("latent_dim", "gate_hidden", "attention_hidden", "decoder_hidden"):
            v = getattr(self, name)
            if not (_is_int(v) and v > 0):
                problems.append(f"{name} must be a positive int, got {v!r}")
        if not (_is_real(self.dropout) and 0.0 <= self.dropout < 1.0):
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (_is_real(self.std_floor) and self.std_floor > 0.0):
            problems.append(f"std_floor must be a finite number > 0, got {self.std_floor!r}")
        for name in ("align_weight", "diversity_weight", "entropy_weight", "sparsity_weight"):
            v = getattr(self, name)
            if not (_is_real(v) and v >= 0.0):
                problems.append(f"{name} must be a finite number >= 0, got {v!r}")
        _raise_problems("FusionConfig", problems)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> FusionConfig:
        if not isinstance(data, Mapping):
            raise ValueError(f"FusionConfig.from_dict expects a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        problems = [f"unknown field {k!r}" for k in sorted(set(data) - known, key=str)]
        problems += [f"missing required field {k!r}" for k in ("modalities", "dims")
                     if k not in data]
        _raise_problems("FusionConfig", problems)
        return cls(**dict(data))

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)


# --------------------------------------------------------------------------------------------
# Progressive masking
# --------------------------------------------------------------------------------------------

MASK_SCHEDULE_KINDS = ("linear", "cosine", "step")


@dataclass
class MaskSchedule:
    """Masking probability as a function of training progress in [0, 1] (the paper's curriculum).

    linear: straight line p_start -> p_end.  cosine: slow start and finish (half cosine).
    step: `steps` equal-length plateaus from p_start to p_end inclusive.
    """

    p_start: float = field(default=0.1, metadata={"help": "masking probability at progress 0"})
    p_end: float = field(default=0.6, metadata={"help": "masking probability at progress 1"})
    kind: str = field(default="linear", metadata={"help": f"one of {MASK_SCHEDULE_KINDS}"})
    steps: int = field(default=5, metadata={"help": "number of plateaus for kind='step' (>= 2)"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        problems: list[str] = []
        for name in ("p_start", "p_end"):
            v = getattr(self, name)
            if not (_is_real(v) and 0.0 <= v <= 1.0):
                problems.append(f"{name} must be a probability in [0, 1], got {v!r}")
        if self.kind not in MASK_SCHEDULE_KINDS:
            problems.append(f"kind must be one of {MASK_SCHEDULE_KINDS}, got {self.kind!r}")
        if not (_is_int(self.steps) and self.steps >= 2):
            problems.append(f"steps must be an int >= 2, got {self.steps!r}")
        _raise_problems("MaskSchedule", problems)

    def probability(self, progress: float) -> float:
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
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> MaskSchedule:
        if not isinstance(data, Mapping):
            raise ValueError(f"MaskSchedule.from_dict expects a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)}, key=str)
        _raise_problems("MaskSchedule", [f"unknown field {k!r}" for k in unknown])
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
        raise ValueError(f"present must be a bool tensor [B, M], got {_describe(present)}")
    if not (_is_real(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"masking probability must be in [0, 1], got {p!r}")
    B, M = present.shape
    device = generator.device if generator is not None else present.device
    draws = torch.rand((2, B, M), generator=generator, device=device).to(present.device)
    masked = (draws[0] < p) & present
    all_hidden = present.any(1) & ~(present & ~masked).any(1)
    pick = torch.where(present, draws[1], -1.0).argmax(1)
    reveal = F.one_hot(pick, M).bool() & all_hidden.unsqueeze(1)
    return masked & ~reveal


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclass
class FusionOutput:
    """Everything a forward pass produces; losses, serving and evaluation all read from it.

    Rows of an invisible modality are exactly zero in gates, latents and attention, and rows of
    an absent modality are exactly zero in normalized_inputs. Reconstructions are produced for
    every modality, visible or not: predicting the missing ones is the point. A sample with no
    visible modality has fused == 0 and attention == 0 (see `has_input`); callers report it.
    """

    fused: Tensor  # [B, d]
    attention: Tensor  # [B, M]; sums to 1 over visible modalities, exactly 0 elsewhere
    latents: Tensor  # [B, M, d]; z_m
    gates: list[Tensor]  # M x [B, d_m]; g_m in (0, 1)
    reconstructions: list[Tensor] | None  # M x [B, d_m]; D_m(f) in normalised input space; None if not asked
    normalized_inputs: list[Tensor]  # M x [B, d_m]; (x_m - mean_m) / std_m, 0 where absent
    present: Tensor  # [B, M] bool
    visible: Tensor  # [B, M] bool

    @property
    def has_input(self) -> Tensor:
        """Bool [B]: the sample had at least one visible modality, so `fused` means something."""
        return self.visible.any(1)


class _Standardize(nn.Module):
    """Per-feature (x - mean) / std with buffers, so the statistics travel in the state dict."""

    def __init__(self, dim: int, floor: float):
        super().__init__()
        self.floor = floor
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Floor again at use time: a hand-edited or foreign state dict may carry zeros.
        return (x - self.mean) / self.std.clamp_min(self.floor)

    def inverse(self, x: Tensor) -> Tensor:
        return x * self.std.clamp_min(self.floor) + self.mean


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out)
    )


class DynamicFusion(nn.Module):
    """Gate -> project -> masked attention -> fused vector -> decoders (paper Sec. 2).

    forward() takes RAW embeddings and normalises them with the model's own buffers (set them
    from training data with set_normalization), so a served model needs nothing but its files.
    """

    def __init__(self, config: FusionConfig):
        super().__init__()
        config.validate()
        self.config = config
        d = config.latent_dim
        self.normalizers = nn.ModuleList(_Standardize(dm, config.std_floor) for dm in config.dims)
        # Gate hidden width capped at d_m: wider than its input adds parameters, not capacity.
        self.gates = nn.ModuleList(
            _mlp(dm, min(config.gate_hidden, dm), dm, config.dropout) for dm in config.dims
        )
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(dm, d), nn.LayerNorm(d)) for dm in config.dims
        )
        # One scorer shared by all modalities: after LayerNorm the latents live on one scale, so
        # a shared scorer judges per-sample content comparably across modalities; the per-modality
        # bias learns the global prior (e.g. "graph is usually more informative than SELFIES").
        self.scorer = nn.Sequential(
            nn.Linear(d, config.attention_hidden), nn.Tanh(), nn.Linear(config.attention_hidden, 1)
        )
        self.modality_bias = nn.Parameter(torch.zeros(config.num_modalities))
        self.decoders = nn.ModuleList(
            _mlp(d, config.decoder_hidden, dm, config.dropout) for dm in config.dims
        )

    # -- normalisation statistics ------------------------------------------------------------

    def set_normalization(self, stats: Mapping[str, tuple]) -> None:
        """Set {modality: (mean, std)} (array-likes of shape [d_m]); std is floored at std_floor.

        Modalities not named keep their current statistics. All-or-nothing: every problem is
        reported in one ValueError and nothing is changed.
        """
        cfg = self.config
        problems: list[str] = []
        staged: list[tuple[int, np.ndarray, np.ndarray]] = []
        for name, pair in stats.items():
            if name not in cfg.modalities:
                problems.append(f"unknown modality {name!r} (known: {cfg.modalities})")
                continue
            m = cfg.modalities.index(name)
            try:
                mean, std = (np.asarray(a, dtype=np.float64) for a in pair)
            except (TypeError, ValueError) as exc:
                problems.append(f"{name}: expected (mean, std) array-likes ({exc})")
                continue
            ok = True
            for label, arr in (("mean", mean), ("std", std)):
                if arr.shape != (cfg.dims[m],):
                    problems.append(
                        f"{name}: {label} has shape {arr.shape}, expected ({cfg.dims[m]},)"
                    )
                    ok = False
                elif not np.isfinite(arr).all():
                    problems.append(f"{name}: {label} contains non-finite values")
                    ok = False
            if ok and (std < 0).any():
                problems.append(f"{name}: std contains negative values")
                ok = False
            if ok:
                staged.append((m, mean, np.maximum(std, cfg.std_floor)))
        _raise_problems("normalisation statistics", problems)
        with torch.no_grad():
            for m, mean, std in staged:
                norm = self.normalizers[m]
                norm.mean.copy_(torch.from_numpy(mean))
                norm.std.copy_(torch.from_numpy(std))

    def get_normalization(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {
            name: (norm.mean.detach().cpu().numpy().copy(), norm.std.detach().cpu().numpy().copy())
            for name, norm in zip(self.config.modalities, self.normalizers)
        }

    def denormalize(self, normalized: Sequence[Tensor]) -> list[Tensor]:
        """Map per-modality tensors (e.g. reconstructions) from normalised back to raw space."""
        return [norm.inverse(x) for norm, x in zip(self.normalizers, normalized)]

    # -- forward -----------------------------------------------------------------------------

    def _check_inputs(self, inputs, present: Tensor) -> list[Tensor | None]:
        cfg = self.config
        M = cfg.num_modalities
        if isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - set(cfg.modalities), key=str)
            if unknown:
                raise ValueError(f"unknown modalities {unknown} (known: {cfg.modalities})")
            inputs = [inputs.get(name) for name in cfg.modalities]
        inputs = list(inputs)
        if len(inputs) != M:
            raise ValueError(
                f"expected {M} inputs in the order {cfg.modalities} (None for absent), "
                f"got {len(inputs)}"
            )
        if not isinstance(present, Tensor) or present.dtype != torch.bool or present.dim() != 2 \
                or present.shape[1] != M:
            raise ValueError(f"present must be a bool tensor [B, {M}], got {_describe(present)}")
        B = present.shape[0]
        for m, (name, dm, x) in enumerate(zip(cfg.modalities, cfg.dims, inputs)):
            if x is None and bool(present[:, m].any()):
                raise ValueError(f"input for modality {name!r} is None but present marks it "
                                 f"present for some samples")
            if x is not None and (not isinstance(x, Tensor) or tuple(x.shape) != (B, dm)):
                raise ValueError(f"input for modality {name!r} must be a tensor [{B}, {dm}], "
                                 f"got {_describe(x)}")
        return inputs

    def forward(
        self,
        inputs: Sequence[Tensor | None] | Mapping[str, Tensor],
        present: Tensor,
        masked: Tensor | None = None,
        reconstruct: bool = True,
    ) -> FusionOutput:
        """inputs: raw [B, d_m] per modality in config order (or a {name: tensor} mapping; None /
        a missing key = absent for the whole batch). Rows where present is False may hold anything,
        NaN included. masked (training only) hides present modalities from the model while keeping
        their normalised values as reconstruction targets. reconstruct=False skips the decoders
        (reconstructions is None): they are ~40% of a small inference forward pass.
        """
        inputs = self._check_inputs(inputs, present)
        if masked is not None and (not isinstance(masked, Tensor) or masked.dtype != torch.bool
                                   or masked.shape != present.shape):
            raise ValueError(f"masked must be a bool tensor shaped like present "
                             f"{tuple(present.shape)}, got {_describe(masked)}")
        ref = self.modality_bias
        present = present.to(ref.device)
        visible = present if masked is None else present & ~masked.to(ref.device)
        B = present.shape[0]

        normalized, gates, latents = [], [], []
        for m, x in enumerate(inputs):
            pres = present[:, m : m + 1]
            vis = visible[:, m : m + 1]
            if x is None:
                x = ref.new_zeros(B, self.config.dims[m])
            # torch.where, never multiplication by the mask: absent rows may be NaN and NaN * 0 is
            # NaN, which would then reach a matmul and poison every row's gradient.
            x = torch.where(pres, x.to(device=ref.device, dtype=ref.dtype), 0.0)
            xn = torch.where(pres, self.normalizers[m](x), 0.0)
            x_in = torch.where(vis, xn, 0.0)
            g = torch.sigmoid(self.gates[m](x_in))
            z = self.projections[m](g * x_in)
            normalized.append(xn)
            gates.append(torch.where(vis, g, 0.0))
            latents.append(torch.where(vis, z, 0.0))
        Z = torch.stack(latents, 1)

        scores = self.scorer(Z).squeeze(-1) + self.modality_bias
        # Masked softmax that cannot produce NaN: -inf logits give weight exactly 0; a row with
        # nothing visible would be all -inf (0/0), so it is softmaxed over zeros and then zeroed.
        any_visible = visible.any(1, keepdim=True)
        logits = torch.where(any_visible, scores.masked_fill(~visible, float("-inf")), 0.0)
        alpha = torch.where(visible, logits.softmax(-1), 0.0)
        fused = (alpha.unsqueeze(-1) * Z).sum(1)

        reconstructions = [dec(fused) for dec in self.decoders] if reconstruct else None
        return FusionOutput(
            fused=fused,
            attention=alpha,
            latents=Z,
            gates=gates,
            reconstructions=reconstructions,
            normalized_inputs=normalized,
            present=present,
            visible=visible,
        )

    @torch.no_grad()
    def embed(
        self,
        inputs: Sequence[Tensor | None] | Mapping[str, Tensor],
        present: Tensor,
        reconstruct: bool = True,
    ) -> FusionOutput:
        """Inference: eval-mode forward without gradients; the module's train/eval state is
        restored afterwards, so it is safe to call in the middle of training (validation)."""
        was_training = self.training
        self.eval()
        try:
            return self(inputs, present, reconstruct=reconstruct)
        finally:
            self.train(was_training)


# --------------------------------------------------------------------------------------------
# Losses (paper Eq. 1-6)
# --------------------------------------------------------------------------------------------


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
    """Squared linear CKA between two gate matrices [B, d_i], [B, d_j] over samples with weight 1.

    cos(vec K_i, vec K_j)^2 with K = Gc Gc^T the centred Gram matrix across samples: 1 when the
    two modalities gate the batch in the same pattern, 0 when unrelated, for any d_i, d_j.
    Constant (zero-variance) gates give 0, never NaN.
    """
    K_i, K_j = _centred_gram(g_i, weight), _centred_gram(g_j, weight)
    num = (K_i * K_j).sum()
    den = (K_i * K_i).sum() * (K_j * K_j).sum()
    # Squared form avoids a sqrt (infinite gradient at 0); Cauchy-Schwarz keeps it in [0, 1].
    return num.square() / den.clamp_min(_TINY)


def fusion_losses(
    config: FusionConfig,
    out: FusionOutput,
    present: Tensor | None = None,
    masked: Tensor | None = None,
) -> dict[str, Tensor]:
    """Eq. 1: total = rec + la*align + ld*div + le*ent + ls*sparse, and each term (float32).

    The masks come from `out` (forward saw them). `present`/`masked` may be passed as well; they
    are then checked against `out`, which catches a forward that was given `present & ~masked` as
    its `present` (reconstruction targets would silently be zero).

    rec      mean over masked (sample, modality) pairs of the per-element squared error of D_m(f)
             against the normalised x_m (divided by d_m so modalities of any dim weigh equally);
             0 when nothing is masked.
    align    mean over visible pairs of softplus(-cos(f, z_m)).
    div      mean over modality pairs of squared linear CKA between their gate patterns, over the
             samples where both are visible (pairs with < 2 such samples are skipped).
    ent      1 - H(alpha) / log(n_visible), mean over samples with >= 2 visible modalities:
             0 for uniform attention, 1 for collapsed. The paper prints the entropy itself but
             states the intent "prevents attention collapse", which needs low entropy penalised.
    sparse   mean over visible pairs of ||g_m||_1 / d_m.
    """
    if present is not None and not torch.equal(present.to(out.present.device), out.present):
        raise ValueError("present differs from the mask forward() was given: call "
                         "model(inputs, present, masked), not model(inputs, visible)")
    if masked is not None:
        expected = out.present & ~masked.to(out.present.device)
        if not torch.equal(expected, out.visible):
            raise ValueError("masked differs from the mask forward() was given: call "
                             "model(inputs, present, masked)")
    present, visible = out.present, out.visible
    hidden = present & ~visible

    # Losses in float32 even under autocast: the CKA and entropy terms lose precision in bf16.
    err = torch.stack(
        [(r.float() - x.float()).square().mean(-1)
         for r, x in zip(out.reconstructions, out.normalized_inputs)],
        1,
    )
    rec = _masked_mean(err, hidden)

    fused = out.fused.float()
    cos = _cosine(fused.unsqueeze(1), out.latents.float())
    align = _masked_mean(F.softplus(-cos), visible)

    M = config.num_modalities
    gates = [g.float() for g in out.gates]
    div_sum = fused.new_zeros(())
    div_pairs = fused.new_zeros(())
    for i in range(M):
        for j in range(i + 1, M):
            both = visible[:, i] & visible[:, j]
            enough = both.sum() >= 2
            sim = gate_similarity(gates[i], gates[j], both.float())
            div_sum = div_sum + torch.where(enough, sim, 0.0)
            div_pairs = div_pairs + enough.float()
    div = div_sum / div_pairs.clamp_min(1)

    alpha = out.attention.float()
    n_visible = visible.sum(1)
    # clamp inside the log: a visible weight can underflow to 0 in float32, and 0 * log 0 = NaN.
    plogp = torch.where(visible, alpha * alpha.clamp_min(_TINY).log(), 0.0)
    norm_entropy = -plogp.sum(1) / n_visible.clamp_min(2).float().log()
    ent = _masked_mean(1.0 - norm_entropy, n_visible >= 2)

    gate_l1 = torch.stack([g.mean(-1) for g in gates], 1)  # gates are > 0, so mean == L1 / d_m
    sparse = _masked_mean(gate_l1, visible)

    total = (
        rec
        + config.align_weight * align
        + config.diversity_weight * div
        + config.entropy_weight * ent
        + config.sparsity_weight * sparse
    )
    return {
        "total": total,
        "reconstruction": rec,
        "alignment": align,
        "diversity": div,
        "entropy": ent,
        "sparsity": sparse,
    }
