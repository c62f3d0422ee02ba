"""Fine-tuning a pretrained fusion model on a task's labels (``dmf finetune --model M --task T``):
the fusion model plus a small MLP head, trained with modality masking kept on, so the predictor
still works when modalities are missing; robustness figures with modalities withheld. The public API:

    from dmf_ray.pipelines.evaluate.tasks import load_task     # the caller loads the task (see below)
    from dmf_ray.pipelines.finetune import FinetuneConfig, Predictor, finetune, robustness

    task = load_task("/data/moleculenet/bbbp")
    result = finetune(FinetuneConfig(model="./model", task="/data/moleculenet/bbbp", out="./bbbp"), task)
    Predictor("./bbbp").predict(["CCO"], withhold=["ecfp"])    # float64 [N, T] probabilities
    robustness("./bbbp", task)["mean"]                          # {"0": auc, "1": auc, "2": auc}

The task is handed in rather than loaded here: the task loader is the evaluate workflow's, and no
workflow imports another (issue 12). Modules: ``fit`` (config, ROC-AUC, robustness; the head and
the masked training loop are the core's, dmf_ray.model.finetune, shared with evaluate's
``fusion-finetuned`` row), ``model`` (the model directory, Predictor)."""

from dmf_ray.pipelines.finetune.fit import FinetuneConfig, FinetuneResult, TaskLike, finetune, robustness, roc_auc
from dmf_ray.pipelines.finetune.model import HEAD_WEIGHTS, FinetunedModel, Predictor, load_finetuned, save_finetuned

__all__ = ["HEAD_WEIGHTS", "FinetuneConfig", "FinetuneResult", "FinetunedModel", "Predictor", "TaskLike", "finetune",
           "load_finetuned", "robustness", "roc_auc", "save_finetuned"]
