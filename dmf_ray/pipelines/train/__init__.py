"""Fusion training with Ray Train: ``driver`` (``train()``, the run directory, resume, publishing),
``config`` (settings), ``data`` (store -> training arrays, validation split), ``step`` (one
optimisation step, validation sums) and ``worker`` (the per-worker loop, checkpoints)."""
