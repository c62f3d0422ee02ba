"""The fine-tuned predictor: the pretrained DynamicFusion plus a small MLP head on its fused
vector, saved as a model directory (dmf_ray.artifact's safetensors + config.json for the fusion
part, ``head.safetensors`` for the head, the head's shape in the card's ``finetune`` section)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dmf_ray.model import DynamicFusion

HEAD_WEIGHTS = "head.safetensors"


class Head(nn.Module):
    """fused [B, d] -> logits [B, T]: Linear, ReLU, Dropout, Linear."""

    def __init__(self, latent_dim: int, hidden: int, n_outputs: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_outputs))

    def forward(self, fused: Tensor) -> Tensor:
        return self.net(fused)


class FinetunedModel(nn.Module):
    """DynamicFusion + Head. ``forward(inputs, present, masked)`` -> logits float32 [B, T].

    ``inputs``: M raw tensors [B, d_m] in the fusion's modality order; ``present``/``masked``
    bool [B, M] (masked: present but hidden, as in training; a withheld modality is simply
    not present). A row with nothing visible gets the head's output for a zero fused vector."""

    def __init__(self, fusion: DynamicFusion, head: Head):
        super().__init__()
        self.fusion = fusion
        self.head = head

    def forward(self, inputs: Sequence[Tensor], present: Tensor, masked: Tensor | None = None) -> Tensor:
        out = self.fusion(list(inputs), present, masked, reconstruct=False)
        return self.head(out.fused)


def head_spec(head: Head) -> dict[str, Any]:
    first, last = head.net[0], head.net[3]
    return {"latent_dim": first.in_features, "hidden": first.out_features, "n_outputs": last.out_features,
            "dropout": float(head.net[2].p)}


def save_finetuned(directory: str | os.PathLike, model: FinetunedModel, card: dict[str, Any]) -> None:
    """Write the model directory: the fusion part as ``dmf train`` writes it (so ``dmf embed`` and
    ``dmf serve`` can use the fine-tuned fusion), the head beside it. ``card`` gains
    ``finetune.head`` (the head's shape)."""
    from safetensors.torch import save_file

    from dmf_ray.artifact import save_fusion_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    card = {**card, "finetune": {**card.get("finetune", {}), "head": head_spec(model.head)}}
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
              str(directory / HEAD_WEIGHTS))
    save_fusion_model(directory, model.fusion, card)  # config.json last: a complete directory


def load_finetuned(directory: str | os.PathLike) -> tuple[FinetunedModel, dict[str, Any]]:
    """(model in eval mode on CPU, config.json). ValueError when the directory has no head."""
    from safetensors.torch import load_file

    from dmf_ray.artifact import load_fusion_model

    fusion, card = load_fusion_model(directory)
    spec = card.get("finetune", {}).get("head")
    if spec is None or not (Path(directory) / HEAD_WEIGHTS).exists():
        raise ValueError(f"{directory} is not a fine-tuned model (no {HEAD_WEIGHTS} / finetune.head in config.json); "
                         "run `dmf finetune` on it first")
    head = Head(spec["latent_dim"], spec["hidden"], spec["n_outputs"], spec["dropout"])
    head.load_state_dict(load_file(str(Path(directory) / HEAD_WEIGHTS)))
    model = FinetunedModel(fusion, head)
    model.eval()
    return model, card


class Predictor:
    """A loaded fine-tuned model plus the encoders it was pretrained on.

        p = Predictor("./bbbp-model").predict(["CCO", "c1ccccc1"], withhold=["ecfp"])

    ``predict`` returns float64 [N, T] probabilities (sigmoid of the logits), NaN in the rows of
    SMILES RDKit cannot parse (they never fail the others)."""

    def __init__(self, model_dir: str | os.PathLike):
        from dmf_ray.encoders.base import encoder_from_spec

        self.model, self.card = load_finetuned(model_dir)
        self.modalities = list(self.model.fusion.config.modalities)
        specs = self.card.get("modalities", {})
        self.encoders = {m: encoder_from_spec(specs[m]) for m in self.modalities}
        self.label_names: list[str] = list(self.card["finetune"].get("label_names", []))

    def predict(self, smiles: Sequence[str], withhold: Sequence[str] = ()) -> np.ndarray:
        from dmf_ray.encoders.batch import encode_smiles

        unknown = [m for m in withhold if m not in self.modalities]
        if unknown:
            raise ValueError(f"unknown modality {unknown[0]!r}: the model has {', '.join(self.modalities)}")
        encoded = encode_smiles(list(smiles), self.encoders, [m for m in self.modalities if m not in set(withhold)])
        out = np.full((len(smiles), self.model.head.net[3].out_features), np.nan)
        if len(encoded.rows):
            out[encoded.rows] = probabilities(self.model, encoded.batch)
        return out


@torch.no_grad()
def probabilities(model: FinetunedModel, batch, batch_size: int = 1024) -> np.ndarray:
    """float64 [N, T] sigmoid outputs for a ModalityBatch over the model's modalities."""
    model.eval()
    values = batch.float32()
    names = list(model.fusion.config.modalities)
    parts = []
    for start in range(0, len(batch), batch_size):
        rows = slice(start, start + batch_size)
        inputs = [torch.from_numpy(values[n][rows]) for n in names]
        parts.append(torch.sigmoid(model(inputs, torch.from_numpy(batch.present[rows]))).double().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.head.net[3].out_features))
