"""Fused embeddings from a trained model directory: SMILES in, one result per input out.

Both batch embedding (``pipelines/embed``) and the online service (``pipelines/serve``) call this, so the two give
the same vector for the same molecule and model by construction.

The model card (config.json) names each modality's encoder spec, copied from the store it was
trained on; encoders are rebuilt from it, never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dmf_ray.artifact import load_fusion_model
from dmf_ray.encoders import Encoder, encoder_from_spec
from dmf_ray.encoders.batch import EncodedInputs, encode_molecules, encode_smiles
from dmf_ray.modalities import ModalityBatch
from dmf_ray.model.fusion import DynamicFusion
from dmf_ray.molecules import Molecule


@dataclass
class FusedBatch:
    fused: np.ndarray  # [n, d] float32; zero rows where nothing was present
    attention: np.ndarray  # [n, M] float32
    gates: list[np.ndarray] | None = None  # M x [n, d_m]
    # M x [n, d_m] in each modality's own units: the decoder's expected value (for a binary or count
    # modality of a reconstruction="auto" model, the probability of a 1 / the expected count)
    reconstructions: list[np.ndarray] | None = None


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
            for r, t in zip(recon, model.reconstruction_values(out.reconstructions)):
                r[part] = t.cpu().numpy()
    return FusedBatch(fused, attention, gates, recon)


def fuse(model: DynamicFusion, batch: ModalityBatch, with_gates: bool = False,
         with_reconstructions: bool = False) -> FusedBatch:
    """``fuse_arrays`` over a ``ModalityBatch``, its modalities put in the model's order (a
    modality the batch lacks is absent for every row)."""
    names = list(model.config.modalities)
    if batch.names != names:
        have = batch.select([m for m in names if m in batch.names])
        values = {m: have.values.get(m, np.zeros((len(batch), d), np.float32)) for m, d in zip(names, model.config.dims)}
        present = np.zeros((len(batch), len(names)), dtype=bool)
        for j, m in enumerate(names):
            if m in have.names:
                present[:, j] = have.present[:, have.names.index(m)]
        batch = ModalityBatch(batch.mol_ids, names, values, present, batch.errors, batch.smiles)
    return fuse_arrays(model, batch.values, batch.present, with_gates, with_reconstructions)


def modality_errors(batch: ModalityBatch, k: int, computed: Sequence[str]) -> dict[str, str]:
    """{modality: the encoder's reason} for row k's modalities of ``computed`` that are absent.

    Relies on ``ModalityBatch.from_encoded``: a computed modality is absent exactly when its
    encoder gave a reason, and row k's reasons are appended in the batch's modality order. A
    row whose reasons do not line up with its absent modalities (a batch built otherwise) gets
    {} here; its reasons stay in ``error`` when no modality is present."""
    failed = [m for j, m in enumerate(batch.names) if m in computed and not batch.present[k, j]]
    reasons = list(batch.errors[k]) if batch.errors else []
    return dict(zip(failed, reasons)) if len(failed) == len(reasons) else {}


def molecule_results(batch: ModalityBatch, fused: FusedBatch, smiles: Sequence[str],
                     no_modality: str = "no modality could be computed",
                     computed: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The one per-molecule result row, for row k of ``batch`` (model order) and ``fused``:
    ``mol_id``, ``smiles``, ``embedding`` [d] float32, ``attention`` {modality: weight},
    ``modalities`` (those used), ``error`` (None), plus ``gates`` / ``reconstructions`` when
    ``fused`` carries them. A molecule with no modality present gets ``error`` instead:
    ``no_modality``, followed by the encoders' reasons when there are any.

    ``computed``: the modalities whose encoders ran on the batch (None: not known, e.g. vectors
    read from a store). Given, every row also gets ``modality_errors`` {modality: reason} for
    each of them that the encoder refused (``modality_errors``), also when others are present."""
    names = batch.names
    results = []
    for k in range(len(batch)):
        item: dict[str, Any] = {"mol_id": batch.mol_ids[k], "smiles": smiles[k]}
        if not batch.present[k].any():
            reasons = "; ".join(batch.errors[k]) if batch.errors else ""
            item["error"] = f"{no_modality}: {reasons}" if reasons else no_modality
        else:
            item |= {
                "embedding": fused.fused[k],
                "attention": {m: float(fused.attention[k, j]) for j, m in enumerate(names)},
                "modalities": [m for j, m in enumerate(names) if batch.present[k, j]],
                "error": None,
            }
            if fused.gates is not None:
                item["gates"] = {m: fused.gates[j][k] for j, m in enumerate(names) if batch.present[k, j]}
            if fused.reconstructions is not None:
                item["reconstructions"] = {m: fused.reconstructions[j][k] for j, m in enumerate(names)}
        if computed is not None:
            item["modality_errors"] = modality_errors(batch, k, computed)
        results.append(item)
    return results


def input_results(encoded: EncodedInputs, fused: FusedBatch,
                  computed: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One result per input SMILES, in order: ``molecule_results`` (``computed`` passed on)
    plus ``input`` for the molecules, ``{"input", "error"}`` for an input that did not parse."""
    results: list[dict[str, Any]] = [{} for _ in encoded.inputs]
    for i, exc in encoded.parse_errors.items():
        results[i] = {"input": encoded.inputs[i], "error": str(exc)}
    rows = molecule_results(encoded.batch, fused, [m.smiles for m in encoded.molecules], computed=computed)
    for i, row in zip(encoded.rows, rows):
        results[i] = {"input": encoded.inputs[i], **row}
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

    def encode(self, molecules: list[Molecule], modalities: list[str]) -> ModalityBatch:
        """The molecules' raw vectors over the model's modalities (model order); those not in
        ``modalities`` are withheld (absent for every molecule)."""
        return encode_molecules(molecules, self.encoders, modalities)

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
        encoded = encode_smiles(smiles, self.encoders, use)
        return input_results(encoded, fuse(self.model, encoded.batch, with_gates, with_reconstructions), use)
