"""Featurize molecule files into an embedding store, as a Ray job.

    ray job submit --working-dir . -- python jobs/featurize.py lib.smi --store s3://bucket/store
"""

from __future__ import annotations

import sys

from dmf_ray import cli


def main(argv: list[str] | None = None) -> int:
    """Same arguments as `dmf featurize`; inside a job, Ray attaches to the cluster it runs on."""
    return cli.main(["featurize", *(sys.argv[1:] if argv is None else argv)], own_process=argv is None)


if __name__ == "__main__":
    sys.exit(main())
