"""Fused embeddings from a trained model directory: SMILES in, one result per input out.

Both batch embedding (embed.py) and the online service (serve.py) call this, so the two give
the same vector for the same molecule and model by construction.

The model card (config.json) names each modality's encoder spec, copied from the store it was
trained on; encoders are rebuilt from it, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dmf_ray.artifact import load_fusion_model
from dmf_ray.encoders import EncodedBatch, Encoder, encoder_from_spec
from dmf_ray.model.fusion import DynamicFusion
from dmf_ray.molecules import InvalidSmilesError, Molecule, parse_smiles


@dataclass
class FusedBatch:
    fused: np.ndarray  # [n, d] float32; zero rows where nothing was present
    attention: np.ndarray  # [n, M] float32
    gates: list[np.ndarray] | None = None  # M x [n, d_m]
    reconstructions: list[np.ndarray] | None = None  # M x [n, d_m], raw input space


def choose_modalities(model_modalities: list[str], use: list[str] | None = None, drop: list[str] | None = None) -> list[str]:
    """The model's modalities to feed: ``use`` (a subset) minus ``drop``; errors name the bad one."""
    chosen = list(model_modalities) if use is None else list(use)
    unknown = [m for m in chosen + list(drop or []) if m not in model_modalities]
    if unknown:
        raise ValueError(f"unknown modality {unknown[0]!r}; this model has {', '.join(model_modalities)}")
    chosen = [m for m in chosen if m not in set(drop or [])]
    if not chosen:
        raise ValueError("no modality left to embed with")
    return chosen


def fuse_arrays(
    model: DynamicFusion,
    values: dict[str, np.ndarray],
    present: np.ndarray,
    with_gates: bool = False,
    with_reconstructions: bool = False,
    batch_size: int = 4096,
) -> FusedBatch:
    """Run the model over raw modality arrays (config order, absent rows anything)."""
    names = model.config.modalities
    n = len(present)
    fused = np.zeros((n, model.config.latent_dim), dtype=np.float32)
    attention = np.zeros((n, len(names)), dtype=np.float32)
    gates = [np.zeros((n, d), np.float32) for d in model.config.dims] if with_gates else None
    recon = [np.zeros((n, d), np.float32) for d in model.config.dims] if with_reconstructions else None
    device = next(model.parameters()).device
    for start in range(0, n, batch_size):
        part = slice(start, min(n, start + batch_size))
        inputs = [torch.as_tensor(np.asarray(values[m][part], dtype=np.float32), device=device) for m in names]
        out = model.embed(inputs, torch.as_tensor(present[part], device=device),
                          reconstruct=with_reconstructions)
        fused[part] = out.fused.cpu().numpy()
        attention[part] = out.attention.cpu().numpy()
        if gates is not None:
            for g, t in zip(gates, out.gates):
                g[part] = t.cpu().numpy()
        if recon is not None:
            for r, t in zip(recon, model.denormalize(out.reconstructions)):
                r[part] = t.cpu().numpy()
    return FusedBatch(fused, attention, gates, recon)


def parse_inputs(smiles: Sequence[str]) -> tuple[list[dict[str, Any]], list[Molecule], list[int]]:
    """Parse every input: (one result slot per input, holding the error for each bad one; the
    molecules; the input position of each molecule)."""
    results: list[dict[str, Any]] = [{} for _ in smiles]
    molecules, where = [], []
    for i, text in enumerate(smiles):
        try:
            molecules.append(parse_smiles(text))
            where.append(i)
        except InvalidSmilesError as exc:
            results[i] = {"input": text, "error": str(exc)}
    return results, molecules, where


def merge_encoded(
    modalities: Sequence[str], dims: Sequence[int], n: int, batches: Mapping[str, EncodedBatch]
) -> tuple[dict[str, np.ndarray], np.ndarray, list[list[str]]]:
    """Encoder outputs ({modality: EncodedBatch} for n molecules) as fuse_arrays wants them: raw
    float32 arrays in model order, the presence mask and per-molecule encoder errors. A modality
    missing from ``batches`` is absent for every molecule."""
    values = {m: np.zeros((n, d), np.float32) for m, d in zip(modalities, dims)}
    present = np.zeros((n, len(modalities)), dtype=bool)
    errors: list[list[str]] = [[] for _ in range(n)]
    for j, name in enumerate(modalities):
        batch = batches.get(name)
        if batch is None:
            continue
        values[name] = batch.values.astype(np.float32)
        for i, err in enumerate(batch.errors):
            if err is None:
                present[i, j] = True
            else:
                errors[i].append(err)
    return values, present, errors


def fill_results(
    results: list[dict[str, Any]],
    inputs: Sequence[str],
    where: Sequence[int],
    molecules: Sequence[Molecule],
    modalities: Sequence[str],
    present: np.ndarray,
    errors: Sequence[Sequence[str]],
    fused: FusedBatch,
) -> list[dict[str, Any]]:
    """Fill the result slot of each parsed molecule (``where[k]`` is the input position of
    ``molecules[k]``, row k of ``present``/``fused``); gates and reconstructions are added when
    ``fused`` carries them. A molecule with no modality present gets an error naming why."""
    for k, (i, molecule) in enumerate(zip(where, molecules)):
        if not present[k].any():
            reason = "; ".join(errors[k]) or "no modality available"
            results[i] = {"input": inputs[i], "mol_id": molecule.mol_id, "smiles": molecule.smiles, "error": f"no modality could be computed: {reason}"}
            continue
        used = [m for j, m in enumerate(modalities) if present[k, j]]
        item: dict[str, Any] = {
            "input": inputs[i],
            "mol_id": molecule.mol_id,
            "smiles": molecule.smiles,
            "embedding": fused.fused[k],
            "attention": {m: float(fused.attention[k, j]) for j, m in enumerate(modalities)},
            "modalities": used,
            "error": None,
        }
        if fused.gates is not None:
            item["gates"] = {m: fused.gates[j][k] for j, m in enumerate(modalities) if present[k, j]}
        if fused.reconstructions is not None:
            item["reconstructions"] = {m: fused.reconstructions[j][k] for j, m in enumerate(modalities)}
        results[i] = item
    return results


class FusionEmbedder:
    """A loaded model plus the encoders it was trained on."""

    def __init__(self, model_dir: str, device: str = "cpu"):
        self.model, self.card = load_fusion_model(model_dir, device=device)
        self.model_dir = model_dir
        self.modalities: list[str] = list(self.model.config.modalities)
        specs = self.card.get("modalities", {})
        missing = [m for m in self.modalities if m not in specs]
        if missing:
            raise ValueError(f"{model_dir}: config.json has no encoder spec for {', '.join(missing)}")
        self.encoders: dict[str, Encoder] = {m: encoder_from_spec(specs[m]) for m in self.modalities}

    def encode(self, molecules: list[Molecule], modalities: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray, list[list[str]]]:
        """Raw modality arrays, the presence mask and per-molecule encoder errors."""
        batches = {m: self.encoders[m].encode(molecules) for m in self.modalities if m in modalities and molecules}
        return merge_encoded(self.modalities, self.model.config.dims, len(molecules), batches)

    def embed_smiles(
        self,
        smiles: list[str],
        modalities: list[str] | None = None,
        drop: list[str] | None = None,
        with_gates: bool = False,
        with_reconstructions: bool = False,
    ) -> list[dict[str, Any]]:
        """One result dict per input, in order. A bad input gets ``{"input", "error"}`` and
        never fails the others."""
        use = choose_modalities(self.modalities, modalities, drop)
        results, molecules, where = parse_inputs(smiles)
        values, present, errors = self.encode(molecules, use)
        fused = fuse_arrays(self.model, values, present, with_gates, with_reconstructions)
        return fill_results(results, smiles, where, molecules, self.modalities, present, errors, fused)
