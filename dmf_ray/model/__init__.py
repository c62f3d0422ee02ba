"""The fusion model: pure torch, no I/O, no Ray (``fusion``: DynamicFusion, FusionConfig, losses,
masking; being split by job)."""
