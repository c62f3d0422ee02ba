"""Figure 2 under the ``refit`` protocol: modalities withheld in every split, the learner refitted.

The ``inference`` protocol (the default, the deployment case the paper's robustness claim is
about) is computed with Table 1's own fits in :mod:`dmf_ray.pipelines.evaluate.table`. ``refit``
withholds the modalities from every split and refits the learner (with the learner and grid
point its Table 1 row chose) on the degraded features: it measures how much information is
left, not the robustness of a fitted model; concatenation then degenerates to the concatenation
of the remaining modalities. It costs one fit per pattern, method and seed.
"""

from __future__ import annotations

import time

from dmf_ray.pipelines.evaluate.protocol import FUSION, removal_mask
from dmf_ray.pipelines.evaluate.results import mean_std
from dmf_ray.pipelines.evaluate.table import TaskRun, fit_row
from dmf_ray.pipelines.evaluate.taskdata import block, fused


def run_refit(run: TaskRun) -> None:
    """Every removal pattern x (fusion, concat) x seed, refitted; adds to ``run.result.robustness``."""
    data, result = run.data, run.result
    for p in run.patterns:
        r0 = time.perf_counter()
        for method in ("fusion", "concat"):
            row = FUSION if method == "fusion" else run.all_concat
            for seed in run.seeds:
                keep = removal_mask(p, data.modalities, data.n, seed, present=data.present)
                X = fused(run.model, data, keep) if method == "fusion" else block(data, data.modalities, keep)
                fit, _ = fit_row(run, X, seed, row)
                result.add_robustness(p.name, method, fit["test_metric"])
        run.log(f"[{result.task}] refit {p.name:<18} fusion {mean_std(result.robustness[p.name]['fusion'])[0]:.3f} "
                f"concat {mean_std(result.robustness[p.name]['concat'])[0]:.3f} ({time.perf_counter() - r0:.1f} s)")
