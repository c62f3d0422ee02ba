"""The pieces of ``dmf_ray.train``: settings, data, the training step, the worker loop."""
