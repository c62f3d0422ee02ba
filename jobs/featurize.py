"""Featurize molecule files into an embedding store, as a Ray job.

    ray job submit --working-dir . -- python jobs/featurize.py lib.smi --store s3://bucket/store
"""

from __future__ import annotations

import sys

from dmf_ray.cli import main

if __name__ == "__main__":
    # Same arguments as `dmf featurize`; inside a job, Ray attaches to the cluster (RAY_ADDRESS).
    sys.exit(main(["featurize", *sys.argv[1:]]))
