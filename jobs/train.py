"""Train a fusion model on an embedding store, as a Ray job.

    ray job submit --working-dir . -- python jobs/train.py --store s3://bucket/store --out /mnt/shared/model --workers 4 --gpu

Same arguments as `dmf train`. Rerunning the same command resumes an interrupted run from its
last checkpoint (kept under <out>/_ray_train unless --storage-path says otherwise: on a
multi-node cluster both must be on storage every node can reach).
"""

from __future__ import annotations

import sys

from dmf_ray import cli


def main(argv: list[str] | None = None) -> int:
    """Same arguments as `dmf train`; inside a job, Ray attaches to the cluster it runs on."""
    return cli.main(["train", *(sys.argv[1:] if argv is None else argv)], own_process=argv is None)


if __name__ == "__main__":
    sys.exit(main())
