"""Fused embeddings for a library or a whole store, as a Ray job.

    ray job submit --working-dir . -- python jobs/embed.py --model ./model --store ./store --out fused.parquet
"""

from __future__ import annotations

import sys

from dmf_ray import cli


def main(argv: list[str] | None = None) -> int:
    """Same arguments as `dmf embed`; inside a job, Ray attaches to the cluster it runs on."""
    return cli.main(["embed", *(sys.argv[1:] if argv is None else argv)], own_process=argv is None)


if __name__ == "__main__":
    sys.exit(main())
