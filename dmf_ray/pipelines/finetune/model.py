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

from dmf_ray.model.finetune import FinetunedModel, Head, predict_logits

__all__ = ["HEAD_WEIGHTS", "FinetunedModel", "Head", "Predictor", "load_finetuned", "probabilities", "save_finetuned"]

HEAD_WEIGHTS = "head.safetensors"


def save_finetuned(directory: str | os.PathLike, model: FinetunedModel, card: dict[str, Any]) -> None:
    """Write the model directory: the fusion part as ``dmf train`` writes it (so ``dmf embed`` and
    ``dmf serve`` can use the fine-tuned fusion), the head beside it. ``card`` gains
    ``finetune.head`` (the head's shape)."""
    from safetensors.torch import save_file

    from dmf_ray.artifact import save_fusion_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    card = {**card, "finetune": {**card.get("finetune", {}), "head": model.head.spec()}}
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
    head = Head(**spec)
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
        out = np.full((len(smiles), self.model.head.n_outputs), np.nan)
        if len(encoded.rows):
            out[encoded.rows] = probabilities(self.model, encoded.batch)
        return out


def probabilities(model: FinetunedModel, batch, batch_size: int = 1024) -> np.ndarray:
    """float64 [N, T] sigmoid outputs for a ModalityBatch over the model's modalities."""
    return torch.sigmoid(torch.from_numpy(predict_logits(model, batch, batch_size=batch_size))).numpy()
