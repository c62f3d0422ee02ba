"""A Ray Tune search over the fusion model's training settings (``dmf tune``).

    from dmf_ray.pipelines.train import TrainConfig, check_training, train
    from dmf_ray.pipelines.tune import TrainingEntry, TuneConfig, tune

    result = tune(TuneConfig(store="./store", out="./tuned", epochs=10,
                             settings=["model.latent_dim=128"],
                             search=["lr=loguniform:1e-4:1e-2", "masking.p_end=uniform:0.3:0.8"]),
                  TrainingEntry(TrainConfig, train, check_training))

What happens, in order:

1. ``check_tune``: the search and the fixed settings are checked against the train workflow's
   own config class (every candidate value a search can produce at its ends), and the store
   against its modalities, before Ray starts; every problem in one ValueError;
2. Ray Tune runs ``num_samples`` trials (times the grid points) through its function API: each
   trial is one ``train()`` call, i.e. one Ray Train (V2) run of the same DDP loop as
   ``dmf train``, written to ``<out>/_tune/trials/<trial id>``; Ray Train's TuneReportCallback
   forwards every epoch's metrics to Tune;
3. ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning", Ray Tune's
   ``ASHAScheduler``) compares trials at epochs grace_period * reduction_factor^k and stops the
   ones below the top 1/reduction_factor there;
4. among the trials that ran every epoch, the one with the best final ``metric`` is copied to
   ``out``: a model directory in the format of ``dmf train --out`` (dmf_ray.artifact), whose
   card holds that trial's settings; ``<out>/tune.json`` records every trial.

Why the train workflow is handed in (``TrainingEntry``) rather than imported: no workflow under
dmf_ray/pipelines imports another (issue 12); the CLI, jobs/ and tests, which may import both,
wire them together. A trial reaches the workflow only through its public ``train()``.

The objective is the validation loss (leave-one-out Eq. 1 total, see pipelines/train/step.py)
or the mean leave-one-out reconstruction cosine. The loss depends on the loss weights, so a
search over ``model.*_weight`` must use ``val/cos_mean`` (refused otherwise).
"""

from dmf_ray.pipelines.tune.config import (METRICS, SEARCH_KINDS, SearchDim, TrainingEntry, TrialRecord, TuneConfig,
                                           TuneResult, parse_search, parse_value, set_path)
from dmf_ray.pipelines.tune.config import TUNE_DIR, TUNE_FILE
from dmf_ray.pipelines.tune.run import TunePlan, check_tune, tune

__all__ = ["METRICS", "SEARCH_KINDS", "TUNE_DIR", "TUNE_FILE", "SearchDim", "TrainingEntry", "TrialRecord",
           "TuneConfig", "TunePlan", "TuneResult", "check_tune", "parse_search", "parse_value", "set_path", "tune"]
