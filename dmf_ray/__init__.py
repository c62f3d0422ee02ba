"""dmf_ray: Ray-distributed molecular embeddings with Dynamic Multi-Modal Fusion."""

__version__ = "0.1.0"
