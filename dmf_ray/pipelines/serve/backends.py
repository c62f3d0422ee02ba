"""The deployments behind the Ingress: the encoders, and the fusion model.

``Encoders`` holds some of the model's encoders (every CPU one, or one GPU one) and runs them
through the fair, cancellable ``EncodeQueue``. ``FusionRunner`` is the fusion network with
cross-request batching (``@serve.batch``: a forward pass is cheap, so plain batching is fair
enough); ``FusionModel`` deploys it alone (``separate_fusion``), the Ingress embeds it otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace

import numpy as np
from ray import serve

from dmf_ray.artifact import load_fusion_model, read_model_config
from dmf_ray.encoders import EncodedBatch, encoder_from_spec
from dmf_ray.inference import FusedBatch
from dmf_ray.molecules import Molecule, mol_from_bytes, parse_smiles
from dmf_ray.pipelines.serve.calls import EncodeCall, FuseCall, batch_size, fuse_calls
from dmf_ray.pipelines.serve.scheduler import EncodeQueue

logger = logging.getLogger("ray.serve")


class _QuietBatchSizeWarning(logging.Filter):
    # Serve warns when max_batch_size > max_ongoing_requests, reading max_batch_size as a count
    # of requests; here it counts molecules (batch_size_fn), so the warning is wrong.
    def filter(self, record: logging.LogRecord) -> bool:
        return "will never achieve the configured" not in record.getMessage()


def set_batching(method, max_batch_molecules: int, batch_wait_timeout_s: float) -> None:
    """Apply the configured batch size (molecules) and wait to a ``@serve.batch`` method."""
    if not any(isinstance(f, _QuietBatchSizeWarning) for f in logger.filters):
        logger.addFilter(_QuietBatchSizeWarning())
    method.set_max_batch_size(max_batch_molecules)
    method.set_batch_wait_timeout_s(batch_wait_timeout_s)


def heavy_atom_counts(molecules: list[Molecule]) -> list[int]:
    return [m.mol.GetNumHeavyAtoms() for m in molecules]


@serve.deployment
class Encoders:
    """Some of the model's encoders, rebuilt from the model card (config.json)."""

    def __init__(self, model_dir: str, modalities: list[str], step_atoms: int, max_step_molecules: int,
                 together: bool = False):
        specs = read_model_config(model_dir).get("modalities", {})
        self.queue = EncodeQueue({m: encoder_from_spec(specs[m]) for m in modalities}, step_atoms, max_step_molecules,
                                 together)
        self._probe = [parse_smiles("CCO")]

    async def encode(self, call: EncodeCall) -> dict[str, EncodedBatch]:
        """{modality: EncodedBatch} for the call's molecules, in order."""
        molecules = [Molecule(i, s, mol_from_bytes(b)) for i, s, b in call.molecules]
        return await self.queue.submit(molecules, heavy_atom_counts(molecules), call.modalities)

    async def stats(self) -> dict[str, int]:
        """Molecules encoded / dropped (their request cancelled) / steps run, since start."""
        return asdict(self.queue.stats)

    async def check_health(self) -> None:
        # Ethanol must encode with every encoder; a broken model / device shows up here. It goes
        # through the queue, so it never runs beside a step.
        out = await self.queue.submit(self._probe, heavy_atom_counts(self._probe), list(self.queue.encoders))
        failed = {m: b.errors[0] for m, b in out.items() if b.errors[0]}
        if failed:
            raise RuntimeError(f"encoders fail on the probe molecule: {failed}")


def standardized_scores(model, truth: dict[str, np.ndarray], fused: FusedBatch) -> dict[str, dict[str, np.ndarray]]:
    """Per hidden modality: float64 [n] cosines of reconstruction to truth, raw ("cosine") and
    in the model's normalised space ("cosine_standardized"): the one reconstruction cosine of
    ``dmf_ray.model.metrics``, so the training log, this API and ``dmf evaluate`` agree."""
    from dmf_ray.model.metrics import reconstruction_cosine

    scores = {}
    for name, true in truth.items():
        recon = fused.reconstructions[model.config.modalities.index(name)]
        cos = reconstruction_cosine(model, name, recon, np.asarray(true, dtype=np.float32))
        scores[name] = {"cosine": cos.raw.cpu().numpy(), "cosine_standardized": cos.normalized.cpu().numpy()}
    return scores


class FusionRunner:
    """The fusion network with cross-request batching (@serve.batch)."""

    def load_fusion(self, model_dir: str, device: str, num_threads: int, max_batch_molecules: int,
                    batch_wait_timeout_s: float) -> None:
        import torch

        torch.set_num_threads(max(1, num_threads))
        self.model, _ = load_fusion_model(model_dir, device=device)
        set_batching(self.fuse, max_batch_molecules, batch_wait_timeout_s)
        cfg = self.model.config
        self._fusion_probe = FuseCall({m: np.ones((1, d), np.float32) for m, d in zip(cfg.modalities, cfg.dims)},
                                      np.ones((1, len(cfg.modalities)), bool))

    @serve.batch(max_batch_size=4096, batch_wait_timeout_s=0.0, batch_size_fn=batch_size)
    async def fuse(self, calls: list[FuseCall]) -> list[FusedBatch]:
        return fuse_calls(self.model, calls)

    async def reconstruct_hidden(
        self, call: FuseCall, truth: dict[str, np.ndarray]
    ) -> tuple[FusedBatch, dict[str, dict[str, np.ndarray]]]:
        """Fuse the visible modalities; reconstruct the hidden ones (``truth``: their raw true
        values, [n, d_m] float32) and score each (``standardized_scores``). Not batched: an
        analysis endpoint. Async, so it shares the event loop with ``fuse``."""
        fused = fuse_calls(self.model, [replace(call, with_reconstructions=True)])[0]
        return fused, standardized_scores(self.model, truth, fused)

    def check_fusion(self) -> None:
        out = fuse_calls(self.model, [self._fusion_probe])[0]
        if not np.isfinite(out.fused).all():
            raise RuntimeError("fusion model returns non-finite values on the probe input")


@serve.deployment
class FusionModel(FusionRunner):
    """The fusion network in its own deployment (``separate_fusion: true``)."""

    def __init__(self, model_dir: str, device: str, num_threads: int, max_batch_molecules: int,
                 batch_wait_timeout_s: float):
        self.load_fusion(model_dir, device, num_threads, max_batch_molecules, batch_wait_timeout_s)

    async def check_health(self) -> None:
        self.check_fusion()
