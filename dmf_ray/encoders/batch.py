"""The one batch driver: SMILES in, a ``ModalityBatch`` and a status per input row out.

Every workflow that turns SMILES into modality vectors outside the featurize pipeline (embed and
serve through ``dmf_ray.inference``, serve's encoder deployment, evaluate) calls this, so a
molecule gets the same vectors, the same id and the same failure reasons everywhere. Featurize
runs the same ``Encoder`` contract but streams molecules into the store shard by shard.

Rows stay aligned with the inputs: nothing is dropped. An input that does not parse keeps its
position with RDKit's reason; a molecule an encoder refuses keeps its row with that modality
absent and the encoder's reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dmf_ray.encoders.base import Encoder
from dmf_ray.modalities import ModalityBatch
from dmf_ray.molecules import InvalidSmilesError, Molecule, iter_parsed


@dataclass
class EncodedInputs:
    """The outcome for ``len(inputs)`` SMILES strings.

    Attributes:
        inputs: the SMILES as given.
        molecules: the K molecules that parsed, in input order.
        rows: ``[K]`` int64, the input position of ``molecules[k]`` (and of batch row k).
        parse_errors: ``{input position: InvalidSmilesError}`` for the inputs that did not parse.
        batch: K rows, one per molecule, over the requested modalities.
    """

    inputs: list[str]
    molecules: list[Molecule]
    rows: np.ndarray
    parse_errors: dict[int, InvalidSmilesError]
    batch: ModalityBatch


def encode_molecules(molecules: Sequence[Molecule], encoders: Mapping[str, Encoder],
                     names: Sequence[str] | None = None) -> ModalityBatch:
    """Run each encoder of ``names`` (default: all of ``encoders``, in order) on the molecules.

    Returns a batch of ``len(molecules)`` rows; a modality of ``encoders`` not in ``names`` is
    absent for every molecule (it is withheld, not computed).

    Raises:
        ValueError: when an encoder returns vectors of another size than it declares.
    """
    all_names = list(encoders)
    use = all_names if names is None else [m for m in all_names if m in set(names)]
    encoded = {m: encoders[m].encode(list(molecules)) for m in use} if molecules else {}
    return ModalityBatch.from_encoded([m.mol_id for m in molecules], all_names,
                                      [encoders[m].dim for m in all_names], encoded)


def encode_smiles(smiles: Sequence[str], encoders: Mapping[str, Encoder],
                  names: Sequence[str] | None = None) -> EncodedInputs:
    """Parse every input (RDKit, canonical id) and encode the molecules that parsed.

    ``names``: the modalities to compute (default: every encoder's); the batch still carries
    every modality of ``encoders``, absent where not computed.
    """
    inputs = list(smiles)
    molecules: list[Molecule] = []
    rows: list[int] = []
    parse_errors: dict[int, InvalidSmilesError] = {}
    for i, parsed in enumerate(iter_parsed(inputs)):
        if isinstance(parsed, InvalidSmilesError):
            parse_errors[i] = parsed
        else:
            molecules.append(parsed)
            rows.append(i)
    batch = encode_molecules(molecules, encoders, names)
    return EncodedInputs(inputs, molecules, np.asarray(rows, dtype=np.int64), parse_errors, batch)
