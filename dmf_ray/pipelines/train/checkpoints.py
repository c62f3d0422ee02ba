"""Files of a training run: the per-epoch checkpoint (weights in safetensors, optimizer state,
loop state in JSON) and metrics.jsonl (one JSON object per epoch), and the progress line."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_STATE = "state.json"


def save_checkpoint(directory: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Write the three checkpoint files into ``directory`` (which must exist)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, os.path.join(directory, CHECKPOINT_WEIGHTS))
    torch.save(optimizer.state_dict(), os.path.join(directory, CHECKPOINT_OPTIMIZER))
    with open(os.path.join(directory, CHECKPOINT_STATE), "w", encoding="utf-8") as f:
        json.dump(state, f, allow_nan=False)


def load_checkpoint(directory: str, device: torch.device | str) -> tuple[dict[str, Tensor], dict | None, dict]:
    """(model state dict on CPU, optimizer state on ``device`` or None, loop state) of a
    checkpoint directory. The optimizer file is read with torch.load(weights_only=True)."""
    from safetensors.torch import load_file

    weights = load_file(os.path.join(directory, CHECKPOINT_WEIGHTS), device="cpu")
    opt_path = os.path.join(directory, CHECKPOINT_OPTIMIZER)
    optimizer = torch.load(opt_path, map_location=device, weights_only=True) if os.path.exists(opt_path) else None
    with open(os.path.join(directory, CHECKPOINT_STATE), encoding="utf-8") as f:
        state = json.load(f)
    return weights, optimizer, state


def write_metrics_file(path: str | os.PathLike, history: list[dict]) -> None:
    """Rewrite metrics.jsonl from the full history, atomically: after a resume it then holds
    exactly the epochs of the checkpoint it resumed from plus the new ones, never a duplicate."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in history:
            f.write(json.dumps(row, allow_nan=False) + "\n")
    os.replace(tmp, path)


def read_metrics_file(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl; [] when it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def format_metrics(m: Mapping[str, Any], modalities: Sequence[str]) -> str:
    """The one-line progress report of an epoch's metrics row."""
    def num(v, spec=".3f"):
        return "n/a" if v is None else format(v, spec)

    cos = " ".join(f"{n} {num(m.get(f'val/cos/{n}'))}" for n in modalities)
    att = " ".join(f"{n} {num(m.get(f'attention/{n}'), '.2f')}" for n in modalities)
    return (
        f"epoch {m['epoch']}/{m['epochs']}  loss {num(m['train/total'])} (rec {num(m['train/reconstruction'])})  "
        f"val loss {num(m['val/loss'])}  val cos {cos}  attention {att}  "
        f"mask p {m['mask_p']:.2f} rate {m['mask_rate']:.2f}  {m['samples_per_s']:,.0f} samples/s  "
        f"{m['epoch_time_s']:.1f} s"
    )
