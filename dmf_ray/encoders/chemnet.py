"""``chemnet``: ChemNet's penultimate 512-d activations, from the weights the ``fcd`` package ships.

ChemNet (Preuer et al. 2018, "Fréchet ChemNet Distance", J. Chem. Inf. Model. 58:1736) is a
SMILES CNN + LSTM trained to predict ~6,000 bioassays from ChEMBL, ZINC and PubChem; FCD uses
its last LSTM state (512 floats) as a molecule's representation. This encoder computes exactly
what ``fcd.get_predictions`` (fcd 1.2) computes, to the last bit: the one-hot SMILES of
``fcd.utils.get_one_hot`` padded to 350 positions and divided by the vocabulary size, through
the network ``fcd.utils.load_imported_model`` builds.

Why every molecule is padded to 350 positions, not to the longest of its batch: the LSTMs run
over the padding too (the first one reversed, so it starts on it), and the last state depends
on how many padded steps there were; padding to the batch's longest changes the vectors by up
to ~1.2 (measured). So the cost per molecule is fixed (~115 MFLOP, all 88 LSTM steps), and
batching by length would change results, not speed.

Limits: a canonical SMILES longer than 349 characters (350 with fcd's end token) does not fit
the input: such a molecule gets this modality absent, with that reason.

Weights: ``package:fcd`` (``ChemNet_v0.13_pretrained.pt`` inside the installed ``fcd`` wheel),
loaded with ``torch.load(weights_only=True)`` (the file holds only lists, dicts and tensors),
pinned by its sha256 and the ``fcd`` version in the spec.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dmf_ray.encoders.base import register
from dmf_ray.encoders.identity import MissingExtraError
from dmf_ray.encoders.pretrained import PretrainedEncoder
from dmf_ray.molecules import Molecule

WEIGHTS = "ChemNet_v0.13_pretrained.pt"
PAD_LENGTH = 350  # fcd's DEFAULT_PAD_LEN: positions, the end token included
MAX_SMILES = PAD_LENGTH - 1


def _fcd():
    try:
        import fcd.utils
    except ImportError as exc:
        raise MissingExtraError(f"encoder 'chemnet' needs the fcd package: pip install 'fcd==1.2.2' ({exc})") from None
    return fcd.utils


@register("chemnet")
class ChemNet(PretrainedEncoder):
    """ChemNet 512-d (see the module docstring). Options (``chemnet=;dtype=float16``):
    ``dtype`` (float32 default, or float16), ``device`` (auto or cpu), ``num_gpus``."""

    description = "ChemNet penultimate layer, 512-d, weights shipped in the fcd package (SMILES <= 349 chars)"
    version = "1"
    dtype = "float32"
    default_batch_size = 512
    default_model = "package:fcd"
    model_files = (WEIGHTS,)
    # A small model: half a GPU per actor where there are GPUs (two actors keep one busy while
    # the other one-hot encodes on its CPU); on CPU one actor per core, one torch thread each.
    num_gpus = 0.5
    cores_per_actor = 1
    # One actor: torch + fcd + scipy imported, the model and a batch of 512: 706 MiB peak RSS
    # measured in a plain process, plus a Ray worker's own share; Ray Data measured up to 844 MiB
    # per actor over 50,000 MOSES molecules, so 1 GiB leaves headroom.
    memory = 1024 << 20
    trained_on = ("ChEMBL bioassays", "PubChem bioassays", "ZINC")

    @property
    def dim(self) -> int:
        return 512

    def load_model(self, directory: str, device: str) -> Any:
        import torch

        utils = _fcd()
        config = torch.load(os.path.join(directory, WEIGHTS), map_location="cpu", weights_only=True)
        return utils.load_imported_model(config).to(device).eval()

    def one_hot(self, smiles: list[str]) -> np.ndarray:
        """[n, 350, 35] float32 inputs, as ``fcd.utils.SmilesDataset`` builds them."""
        get_one_hot = _fcd().get_one_hot
        rows = [get_one_hot(s, pad_len=PAD_LENGTH) for s in smiles]
        return (np.stack(rows) / rows[0].shape[1]).astype(np.float32)

    def embed(self, model: Any, molecules: list[Molecule]) -> tuple[np.ndarray, list[str | None]]:
        import torch

        reasons: list[str | None] = [
            None if len(m.smiles) <= MAX_SMILES
            else f"canonical SMILES has {len(m.smiles)} characters; ChemNet reads at most {MAX_SMILES}"
            for m in molecules
        ]
        values = np.zeros((len(molecules), self.dim), dtype=np.float32)
        fits = [i for i, r in enumerate(reasons) if r is None]
        if fits:
            device = next(model.parameters()).device
            x = torch.from_numpy(self.one_hot([molecules[i].smiles for i in fits]))
            with torch.inference_mode():
                values[fits] = model(x.transpose(1, 2).to(device)).float().cpu().numpy()
        return values, reasons
