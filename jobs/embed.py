"""Fused embeddings for a library or a whole store, as a Ray job.

    ray job submit --working-dir . -- python jobs/embed.py --model ./model --store ./store --out fused.parquet
"""

from __future__ import annotations

import sys

from dmf_ray.cli import main

if __name__ == "__main__":
    # Same arguments as `dmf embed`; inside a job, Ray attaches to the cluster (RAY_ADDRESS).
    sys.exit(main(["embed", *sys.argv[1:]]))
