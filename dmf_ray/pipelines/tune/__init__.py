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
   forwards every epoch's metrics to Tune (``report.DownstreamReport`` first adds the downstream
   scores of the epoch's checkpoint when the search names objective tasks);
3. ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning", Ray Tune's
   ``ASHAScheduler``) compares trials at epochs grace_period * reduction_factor^k and stops the
   ones below the top 1/reduction_factor there;
4. among the trials that ran every epoch, the one with the best final ``metric`` is copied to
   ``out``: a model directory in the format of ``dmf train --out`` (dmf_ray.artifact), whose
   card holds that trial's settings; ``<out>/tune.json`` records every trial.

Why the train workflow is handed in (``TrainingEntry``) rather than imported: no workflow under
dmf_ray/pipelines imports another (issue 12); the CLI, jobs/ and tests, which may import both,
wire them together. A trial reaches the workflow only through its public ``train()``.

The objective is the validation loss (leave-one-out Eq. 1 total, see pipelines/train/step.py),
the mean leave-one-out reconstruction cosine, or ``downstream/roc_auc``: the mean valid ROC-AUC
of a logistic regression on the trial's fused vectors over named classification tasks, scored
at every epoch (``objective``; the evaluate workflow's task loader, featurizer and learner are
handed in as a ``TaskEntry``, and the tasks' molecules are encoded once per search):

    from dmf_ray.pipelines.evaluate.downstream import fit_and_score
    from dmf_ray.pipelines.evaluate.features import featurize_smiles
    from dmf_ray.pipelines.evaluate.config import TaskSpec
    from dmf_ray.pipelines.evaluate.tasks import load_task
    from dmf_ray.pipelines.train.checkpoints import load_checkpoint
    from dmf_ray.pipelines.tune import TaskEntry

    tune(TuneConfig(store="./store", out="./tuned", search=["lr=loguniform:1e-4:1e-2"],
                    tasks=["bbbp=/data/moleculenet/bbbp"]),
         TrainingEntry(TrainConfig, train, check_training, load_checkpoint),
         tasks=TaskEntry(load_task, featurize_smiles, fit_and_score, TaskSpec.parse))

Those tasks' test splits are never read; their valid splits choose the model, so valid figures
on them are optimistic. The loss depends on the loss weights, so a search over
``model.*_weight`` must not use ``val/loss`` (refused).
"""

from dmf_ray.pipelines.tune.config import (METRICS, SEARCH_KINDS, SearchDim, TrainingEntry, TrialRecord, TuneConfig,
                                           TuneResult, parse_search, parse_value, set_path)
from dmf_ray.pipelines.tune.config import DOWNSTREAM_METRIC, TUNE_DIR, TUNE_FILE
from dmf_ray.pipelines.tune.objective import (LEARNER, ObjectiveData, TaskEntry, objective_scores,
                                              prepare_objective)
from dmf_ray.pipelines.tune.run import TunePlan, check_tune, tune

__all__ = ["DOWNSTREAM_METRIC", "LEARNER", "METRICS", "SEARCH_KINDS", "TUNE_DIR", "TUNE_FILE", "ObjectiveData",
           "SearchDim", "TaskEntry", "TrainingEntry", "TrialRecord", "TuneConfig", "TunePlan", "TuneResult",
           "check_tune", "objective_scores", "parse_search", "parse_value", "prepare_objective",
           "set_path", "tune"]
