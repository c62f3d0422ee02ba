"""Encoders: one registry, built-in offline encoders registered on import."""

from dmf_ray.encoders import fingerprints, descriptors  # noqa: F401, I001  (registers built-ins in this order)
from dmf_ray.encoders import transformer  # noqa: F401, I001  (hf, selfies-ted; torch/transformers imported lazily)
from dmf_ray.encoders.base import (
    EncodedBatch,
    Encoder,
    UnknownEncoderError,
    available_encoders,
    create_encoder,
    encoder_class,
    encoder_from_option,
    encoder_from_spec,
    register,
)

DEFAULT_ENCODERS = ("ecfp", "maccs", "rdkit2d")

__all__ = [
    "DEFAULT_ENCODERS",
    "EncodedBatch",
    "Encoder",
    "UnknownEncoderError",
    "available_encoders",
    "create_encoder",
    "encoder_class",
    "encoder_from_option",
    "encoder_from_spec",
    "register",
]
