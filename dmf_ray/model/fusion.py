"""Dynamic Multi-Modal Fusion (paper Sec. 2): the config and the module. Pure torch: no file I/O
(artifact.py) and no Ray (pipelines/train), so all of it runs in a CPU unit test.

Shapes: B samples, M modalities (in config order), d_m the raw dim of modality m, d = latent_dim.
Three bool [B, M] masks appear throughout:
  present   the sample has an embedding for this modality at all (the store is partially paired)
  masked    present, but hidden from the model for this training step (progressive masking)
  visible   present & ~masked: what the model is allowed to look at
At inference nothing is masked, so visible == present.

The losses are in ``losses`` (the reconstruction likelihood of each value kind in
``likelihoods``), the masking schedule in ``masking``, the normalisation statistics in
``normalization`` and the reconstruction cosine in ``metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from dmf_ray.model.likelihoods import ValueKind, baseline, mean_output, to_raw
from dmf_ray.model.validation import ConfigError, ConfigModel, describe, is_int

_StrictInt = Annotated[int, Field(strict=True)]

# Settings added after models were first saved, at the value a model saved before them was trained
# with (their defaults now differ): FusionConfig.from_dict fills them in for an old config.json, and
# the training run record leaves them out at these values so an old model keeps its identity.
LEGACY_SETTINGS = {"reconstruction": "mse", "self_reconstruction_weight": 0.0}


class FusionSettings(ConfigModel):
    """The model's hyperparameters: everything in FusionConfig except what the data fixes
    (modality names and dims). TrainConfig nests it, so a new setting is one field here.

    The paper gives no loss weights; the defaults keep reconstruction (the self-supervised signal
    that makes the fused vector informative about missing modalities) dominant and the
    regularisers an order of magnitude smaller. ``reconstruction="auto"`` (the default) reconstructs
    each modality with the likelihood of its value kind (``likelihoods``): on 8,651 ZINC molecules
    it raised the hidden-modality cosine of ECFP from 0.24 to 0.29 and of MACCS from 0.75 to 0.79,
    downstream ROC-AUC unchanged within pretraining noise (README, quality section).

    ``self_reconstruction_weight`` (ours, not the paper's) also asks the fused vector to
    reconstruct the modalities it saw: the paper's reconstruction term covers only the masked
    ones, which rewards the information modalities share and none of what each says alone. Over
    ecfp + chemnet + chemprop-admet pretrained on 17,304 ZINC molecules, weight 3 against 0 raised
    the frozen fused vector's mean valid ROC-AUC on bace, bbbp, clintox and sider from 0.810 to
    0.823 (XGBoost) and 0.821 to 0.830 (logistic regression); the default is 3 (README, quality).
    Models saved before the setting existed load with 0, the objective they were trained with.
    """

    latent_dim: int = Field(512, gt=0, strict=True, description="fused vector (shared latent) dim")
    gate_hidden: int = Field(256, gt=0, strict=True,
                             description="gate MLP hidden width (capped at the modality dim)")
    attention_hidden: int = Field(128, gt=0, strict=True, description="attention scorer hidden width")
    decoder_hidden: int = Field(512, gt=0, strict=True, description="decoder MLP hidden width")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, strict=True, allow_inf_nan=False,
                           description="dropout in the gate and decoder MLPs")
    std_floor: float = Field(1e-6, gt=0.0, strict=True, allow_inf_nan=False,
                             description="normalisation std is max(std, std_floor)")
    align_weight: float = Field(0.1, ge=0.0, strict=True, allow_inf_nan=False,
                                description="lambda_a, weight of the alignment loss (Eq. 3)")
    diversity_weight: float = Field(0.05, ge=0.0, strict=True, allow_inf_nan=False,
                                    description="lambda_d, weight of the gate diversity loss (Eq. 4, CKA form)")
    entropy_weight: float = Field(0.05, ge=0.0, strict=True, allow_inf_nan=False,
                                  description="lambda_e, weight of the attention entropy loss (Eq. 5, inverted)")
    sparsity_weight: float = Field(0.01, ge=0.0, strict=True, allow_inf_nan=False,
                                   description="lambda_s, weight of the gate sparsity loss (Eq. 6)")
    self_reconstruction_weight: float = Field(
        3.0, ge=0.0, strict=True, allow_inf_nan=False,
        description="lambda_r, weight of the reconstruction of the visible modalities from the fused vector "
                    "(autoencoding; 0 = the paper's cross-modal reconstruction of the masked ones only)")
    reconstruction: Literal["auto", "mse"] = Field(
        "auto", description="reconstruction loss (Eq. 2): auto = by each modality's value kind (Bernoulli for "
                            "bits, Poisson for counts, squared error for the rest); mse = squared error on "
                            "standardised values for all (models saved before this setting existed)")


class FusionConfig(FusionSettings):
    """Everything needed to rebuild a DynamicFusion; JSON via to_dict/from_dict (config.json).

    Raises ConfigError (a ValueError) naming every problem at once."""

    modalities: list[str] = Field(description="modality names; fixes the order of inputs")
    dims: list[_StrictInt] = Field(description="raw embedding dim of each modality")
    value_kinds: list[ValueKind] | None = Field(
        None, description="value kind of each modality (binary, count, continuous; the encoders declare it); "
                          "None: all continuous")

    @classmethod
    def cross_problems(cls, data: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        mods, dims = data.get("modalities"), data.get("dims")
        mods = list(mods) if isinstance(mods, tuple) else mods
        dims = list(dims) if isinstance(dims, tuple) else dims
        if isinstance(mods, list):
            if not mods:
                problems.append("modalities must be a non-empty list of names, got []")
            for name in mods:
                if not isinstance(name, str) or not name.strip():
                    problems.append(f"modality name {name!r} must be a non-empty string")
            dupes = sorted({str(n) for n in mods if mods.count(n) > 1})
            if dupes:
                problems.append(f"modality names must be unique, repeated: {dupes}")
        if isinstance(dims, list):
            bad = [d for d in dims if not (is_int(d) and d > 0)]
            if not dims or bad:
                problems.append(f"dims must be a non-empty list of positive ints, got bad values {bad!r}")
            if isinstance(mods, list) and len(mods) != len(dims):
                problems.append(f"dims has {len(dims)} entries but modalities has {len(mods)}: {mods!r}")
        kinds = data.get("value_kinds")
        if isinstance(kinds, (list, tuple)) and isinstance(mods, list) and len(kinds) != len(mods):
            problems.append(f"value_kinds has {len(kinds)} entries but modalities has {len(mods)}: {mods!r}")
        return problems

    @classmethod
    def build(cls, modalities: Sequence[str], dims: Sequence[int], settings: FusionSettings,
              value_kinds: Sequence[str] | None = None) -> FusionConfig:
        """The config of a model over these modalities with these hyperparameters; ``value_kinds``
        (one of VALUE_KINDS per modality, e.g. from ``encoders.base.value_kind_of``) or None for
        all continuous."""
        kinds = None if value_kinds is None else list(value_kinds)
        return cls(modalities=list(modalities), dims=list(dims), value_kinds=kinds, **settings.model_dump())

    def settings(self) -> FusionSettings:
        """The hyperparameters alone (what TrainConfig.model holds)."""
        return FusionSettings(**self.model_dump(exclude={"modalities", "dims", "value_kinds"}))

    @property
    def reconstruction_kinds(self) -> list[str]:
        """The likelihood each modality is reconstructed with (a VALUE_KINDS entry): its value
        kind under ``reconstruction="auto"``, "continuous" (squared error) under "mse"."""
        if self.reconstruction == "mse" or self.value_kinds is None:
            return ["continuous"] * len(self.modalities)
        return list(self.value_kinds)

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: Mapping) -> FusionConfig:
        """From to_dict()'s output (config.json); unknown and missing fields are named."""
        if not isinstance(data, Mapping):
            raise ConfigError(cls.__name__, [f"from_dict expects a mapping, got {type(data).__name__}"])
        problems = [f"unknown field {k!r}" for k in sorted(set(data) - set(cls.model_fields), key=str)]
        problems += [f"missing required field {k!r}" for k in ("modalities", "dims") if k not in data]
        if problems:
            raise ConfigError(cls.__name__, problems)
        return cls(**{**LEGACY_SETTINGS, **data})

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)


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
    # M x [B, d_m]; D_m(f): z-scored values, logits or log-rates (config.reconstruction_kinds,
    # see likelihoods); DynamicFusion.reconstruction_values maps them to raw units. None if not asked.
    reconstructions: list[Tensor] | None
    normalized_inputs: list[Tensor]  # M x [B, d_m]; (x_m - mean_m) / std_m, 0 where absent
    present: Tensor  # [B, M] bool
    visible: Tensor  # [B, M] bool
    # M x [B, d_m]: what reconstructions are scored against: normalized_inputs for continuous,
    # the raw values for binary and count (0 where absent). None: normalized_inputs for all.
    targets: list[Tensor] | None = None
    # [M] float: each modality's reconstruction loss divisor (likelihoods.baseline; 1 for
    # continuous). None: 1 for all.
    reconstruction_scales: Tensor | None = None

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
        reported in one ValueError and nothing is changed. The output bias of the decoder of a
        binary or count modality (under ``reconstruction="auto"``) is set to predict the mean
        (``likelihoods.mean_output``): call it before training, not on a trained model.
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
        if problems:
            raise ConfigError("normalisation statistics", problems)
        with torch.no_grad():
            for m, mean, std in staged:
                norm = self.normalizers[m]
                norm.mean.copy_(torch.from_numpy(mean))
                norm.std.copy_(torch.from_numpy(std))
            self._start_decoders_at_mean([m for m, _, _ in staged])

    def get_normalization(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {
            name: (norm.mean.detach().cpu().numpy().copy(), norm.std.detach().cpu().numpy().copy())
            for name, norm in zip(self.config.modalities, self.normalizers)
        }

    def denormalize(self, normalized: Sequence[Tensor]) -> list[Tensor]:
        """Map per-modality tensors (e.g. normalized_inputs) from normalised back to raw space."""
        return [norm.inverse(x) for norm, x in zip(self.normalizers, normalized)]

    def reconstruction_values(self, reconstructions: Sequence[Tensor]) -> list[Tensor]:
        """Decoder outputs (FusionOutput.reconstructions) in each modality's own units, the
        expected value of what the decoder predicts: the un-standardised value (continuous), the
        probability of a 1 (binary) or the expected count (count); see ``likelihoods.to_raw``."""
        return [to_raw(kind, r, norm.mean, norm.std.clamp_min(norm.floor))
                for kind, norm, r in zip(self.config.reconstruction_kinds, self.normalizers, reconstructions)]

    def reconstruction_scales(self) -> Tensor:
        """[M] float32: each modality's reconstruction-loss divisor (``likelihoods.baseline`` of
        its mean: 1 for continuous). Cached until the statistics change."""
        key = tuple(norm.mean._version for norm in self.normalizers) + (self.modality_bias.device,)
        if getattr(self, "_scales_key", None) != key:
            values = [baseline(kind, norm.mean) for kind, norm in zip(self.config.reconstruction_kinds,
                                                                      self.normalizers)]
            self._scales = torch.tensor(values, dtype=torch.float32, device=self.modality_bias.device)
            self._scales_key = key
        return self._scales

    def _start_decoders_at_mean(self, modalities: Sequence[int]) -> None:
        # A z-scored decoder starting near 0 predicts the mean; a logit or log-rate decoder
        # starting near 0 predicts p = 0.5 or one count per feature, far from sparse data.
        for m in modalities:
            start = mean_output(self.config.reconstruction_kinds[m], self.normalizers[m].mean)
            if start is not None:
                self.decoders[m][-1].bias.copy_(start.to(self.decoders[m][-1].bias.dtype))

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
            raise ValueError(f"present must be a bool tensor [B, {M}], got {describe(present)}")
        B = present.shape[0]
        for m, (name, dm, x) in enumerate(zip(cfg.modalities, cfg.dims, inputs)):
            if x is None and bool(present[:, m].any()):
                raise ValueError(f"input for modality {name!r} is None but present marks it "
                                 f"present for some samples")
            if x is not None and (not isinstance(x, Tensor) or tuple(x.shape) != (B, dm)):
                raise ValueError(f"input for modality {name!r} must be a tensor [{B}, {dm}], "
                                 f"got {describe(x)}")
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
                             f"{tuple(present.shape)}, got {describe(masked)}")
        ref = self.modality_bias
        present = present.to(ref.device)
        visible = present if masked is None else present & ~masked.to(ref.device)
        B = present.shape[0]

        kinds = self.config.reconstruction_kinds
        normalized, targets, gates, latents = [], [], [], []
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
            targets.append(xn if kinds[m] == "continuous" else x)
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
            targets=targets,
            reconstruction_scales=self.reconstruction_scales() if reconstruct else None,
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

