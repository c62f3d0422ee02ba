"""Encoders: one registry, built-in offline encoders registered on import.

Modules: ``base`` (the contract, ``EncoderSpec``, the registry), ``fingerprints`` and
``descriptors`` (RDKit), ``identity`` (model locations and content hashes), ``pretrained`` (the
base for models in files), ``hf`` (Hugging Face transformers), ``chemnet`` (ChemNet from the
``fcd`` package), ``chemprop`` (Chemprop v2 D-MPNN checkpoints; ADMET-AI's by default). Neural
packages (torch, transformers, fcd, chemprop) are imported only when such an encoder is built.
"""

from dmf_ray.encoders import fingerprints, descriptors  # noqa: F401, I001  (registers built-ins in this order)
from dmf_ray.encoders import hf, chemnet, chemprop  # noqa: F401, I001  (neural packages imported lazily)
from dmf_ray.encoders.base import (
    ActorPlan,
    EncodedBatch,
    Encoder,
    EncoderSpec,
    MoleculeRefused,
    UnknownEncoderError,
    available_encoders,
    canonical_molecules,
    create_encoder,
    encoder_class,
    encoder_from_option,
    encoder_from_spec,
    register,
)
from dmf_ray.encoders.identity import MissingExtraError, ModelMismatchError
from dmf_ray.encoders.pretrained import PretrainedEncoder

DEFAULT_ENCODERS = ("ecfp", "maccs", "rdkit2d")

__all__ = [
    "DEFAULT_ENCODERS",
    "ActorPlan",
    "EncodedBatch",
    "Encoder",
    "EncoderSpec",
    "MissingExtraError",
    "ModelMismatchError",
    "MoleculeRefused",
    "PretrainedEncoder",
    "UnknownEncoderError",
    "available_encoders",
    "canonical_molecules",
    "create_encoder",
    "encoder_class",
    "encoder_from_option",
    "encoder_from_spec",
    "register",
]
