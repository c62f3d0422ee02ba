"""Downstream evaluation of a fusion model (Table 1, Figures 2-5), as a Ray job or locally.

    python jobs/evaluate.py --model ./model --task bbbp=../shared/data/moleculenet/bbbp --out ./report
    ray job submit --working-dir . -- python jobs/evaluate.py --model ./model --task data.csv --split scaffold --out ./report

Same arguments as `dmf evaluate`. Needs no Ray: molecules are encoded in a process pool on the
node the job runs on and the downstream forests use --n-jobs cores.
"""

from __future__ import annotations

import sys

from dmf_ray import cli


def main(argv: list[str] | None = None) -> int:
    """Same arguments as `dmf evaluate` (no Ray needed: a process pool on this node)."""
    return cli.main(["evaluate", *(sys.argv[1:] if argv is None else argv)], own_process=argv is None)


if __name__ == "__main__":
    sys.exit(main())
