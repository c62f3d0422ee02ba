"""Fine-tuning the pretrained fusion model plus a head on a task's labels, with modality masking
kept on, and the ROC-AUC robustness figures (0, 1, 2 modalities withheld at inference). The
training loop itself is dmf_ray.model.finetune.fit_finetuned; this module adds the task, the
encoders, ROC-AUC as the valid score, and the model directory.

In-process torch on the driver: a MoleculeNet task (1-40k molecules) fits in memory and a few
epochs of a small head cost seconds, less than starting a Ray Train worker group."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import Field

from dmf_ray.model.finetune import FinetunedModel, Head, fit_finetuned, make_optimizer
from dmf_ray.model.metrics import roc_auc_per_column
from dmf_ray.model.validation import ConfigModel
from dmf_ray.modalities import ModalityBatch
from dmf_ray.pipelines.finetune.model import Predictor, probabilities, save_finetuned


class TaskLike(Protocol):
    """What finetune reads of a task (dmf_ray.pipelines.evaluate's Task has it): per split
    ``"train"``, ``"valid"``, ``"test"``, the SMILES and float labels [n, T] (NaN = missing)."""

    name: str
    smiles: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    label_names: list[str]
    kind: str


class FinetuneConfig(ConfigModel):
    """Everything `dmf finetune` takes. Raises ConfigError (a ValueError) naming every problem."""

    model: str = Field(description="pretrained fusion model directory (`dmf train --out`, or `dmf tune`'s out)")
    task: str = Field(description="the task: a folder with train.csv, valid.csv, test.csv (MoleculeNet style)")
    out: str = Field(description="model directory to write: the fine-tuned fusion model plus head.safetensors")
    epochs: int = Field(30, ge=1, strict=True, description="most passes over the training split")
    patience: int = Field(5, ge=1, strict=True,
                          description="stop after this many epochs without a better validation ROC-AUC (the best "
                                      "epoch is kept)")
    batch_size: int = Field(64, ge=1, strict=True, description="molecules per step")
    lr: float = Field(1e-3, gt=0, strict=True, allow_inf_nan=False, description="AdamW learning rate of the head")
    fusion_lr: float = Field(1e-4, ge=0, strict=True, allow_inf_nan=False,
                             description="AdamW learning rate of the fusion model (0 = frozen)")
    weight_decay: float = Field(1e-4, ge=0, strict=True, allow_inf_nan=False, description="AdamW weight decay")
    head_hidden: int = Field(128, ge=1, strict=True, description="hidden width of the MLP head")
    dropout: float = Field(0.1, ge=0, lt=1, strict=True, allow_inf_nan=False, description="dropout in the head")
    mask_p: float = Field(0.3, ge=0, le=1, strict=True, allow_inf_nan=False,
                          description="probability of hiding each present modality of a molecule at each step "
                                      "(kept on so the predictor still works with modalities missing)")
    seed: int = Field(0, ge=0, strict=True, description="seed for the head's initialisation, masking and order")


@dataclass
class FinetuneResult:
    model_dir: str
    valid_auc: float | None  # at the best epoch
    test_auc: float | None
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Mean ROC-AUC over the label columns that have both classes among their rows with a label
    and a score (dmf_ray.model.metrics.roc_auc_per_column); None when none has. labels, scores [n, T]."""
    defined = [a for a in roc_auc_per_column(labels, scores) if not np.isnan(a)]
    return float(np.mean(defined)) if defined else None


@dataclass
class _Split:
    batch: ModalityBatch  # the molecules that parsed
    labels: np.ndarray  # float64 [n, T] of those molecules


def _encode(predictor_encoders: dict, names: list[str], task: TaskLike, split: str) -> _Split:
    from dmf_ray.encoders.batch import encode_smiles

    encoded = encode_smiles(task.smiles[split], predictor_encoders, names)
    labels = np.array(task.labels[split], dtype=np.float64)[encoded.rows]
    # A column the task lists as unfittable (one class, or no label, in train) is neither
    # trained on nor scored, as dmf evaluate's learners skip it.
    skipped = getattr(task, "skipped_labels", {})
    labels[:, [j for j, c in enumerate(task.label_names) if c in skipped]] = np.nan
    return _Split(encoded.batch, labels)


def _check_task(task: TaskLike) -> None:
    if task.kind != "classification":
        raise ValueError(f"task {task.name}: finetune supports classification tasks (0/1 labels), got {task.kind}")
    for split in ("train", "valid", "test"):
        if len(task.smiles.get(split, [])) == 0:
            raise ValueError(f"task {task.name}: the {split} split is empty")


def finetune(config: FinetuneConfig, task: TaskLike, log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune ``config.model`` with a new head on ``task`` (loaded by the caller, e.g. with
    dmf_ray.pipelines.evaluate's load_task: workflows do not import each other) and write
    ``config.out``. The epoch with the best validation ROC-AUC is kept.

    Raises ValueError for a regression task, an empty split, or a model directory that does not
    load (ValueError/FileNotFoundError from dmf_ray.artifact)."""
    from dmf_ray.artifact import load_fusion_model
    from dmf_ray.encoders.base import encoder_from_spec

    started = time.time()
    _check_task(task)
    fusion, card = load_fusion_model(config.model)
    names = list(fusion.config.modalities)
    encoders = {m: encoder_from_spec(card["modalities"][m]) for m in names}
    data = {s: _encode(encoders, names, task, s) for s in ("train", "valid", "test")}
    torch.manual_seed(config.seed)
    model = FinetunedModel(fusion, Head(fusion.config.latent_dim, config.head_hidden, len(task.label_names),
                                        config.dropout))
    optimizer = make_optimizer(model, config.lr, config.weight_decay, fusion_lr=config.fusion_lr)
    log(f"finetune {task.name}: {len(data['train'].labels)} training, {len(data['valid'].labels)} validation "
        f"molecules; {len(task.label_names)} label(s); masking p={config.mask_p}"
        + "".join(f"; label {c} skipped: {why}" for c, why in getattr(task, "skipped_labels", {}).items()))

    def valid_auc(m: FinetunedModel) -> float | None:
        return roc_auc(data["valid"].labels, probabilities(m, data["valid"].batch))

    def report(entry: dict[str, Any]) -> None:
        auc = entry["valid"]
        log(f"  epoch {entry['epoch']}: loss {entry['train_loss']:.4f}, valid ROC-AUC "
            f"{auc if auc is None else f'{auc:.4f}'}")

    fit = fit_finetuned(model, optimizer, data["train"].batch, data["train"].labels, valid_auc,
                        epochs=config.epochs, patience=config.patience, batch_size=config.batch_size,
                        mask_p=config.mask_p, generator=torch.Generator().manual_seed(config.seed), loss="bce",
                        on_epoch=report)
    history = [{"epoch": h["epoch"], "train_loss": h["train_loss"], "valid_auc": h["valid"]} for h in fit.history]
    test_auc = roc_auc(data["test"].labels, probabilities(model, data["test"].batch))
    result = FinetuneResult(config.out, fit.best_score, test_auc, fit.best_epoch, fit.epochs_run, history,
                            time.time() - started)
    save_finetuned(config.out, model, _card(card, config, task, result))
    log(f"model written to {config.out}: best epoch {result.best_epoch}, valid ROC-AUC {result.valid_auc}, "
        f"test ROC-AUC {test_auc}")
    return result


def _card(pretrained: dict, config: FinetuneConfig, task: TaskLike, result: FinetuneResult) -> dict[str, Any]:
    keep = {k: v for k, v in pretrained.items() if k not in ("format", "format_version", "fusion", "weights_sha256")}
    return {**keep, "finetune": {**config.model_dump(), "task_name": task.name, "label_names": list(task.label_names),
                                 "skipped_labels": dict(getattr(task, "skipped_labels", {})),
                                 "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                                 "valid_auc": result.valid_auc, "test_auc": result.test_auc,
                                 "history": result.history}}


def robustness(model_dir: str, task: TaskLike, split: str = "test", max_withheld: int = 2) -> dict[str, Any]:
    """Test ROC-AUC with 0, 1, ..., ``max_withheld`` modalities withheld at inference.

    Returns {"by_subset": {"-": auc, "ecfp": auc, "ecfp+maccs": auc, ...} (the withheld
    modalities, '-' for none), "mean": {"0": auc, "1": mean over subsets of one, "2": ...}}; a
    count that would withhold every modality is left out of "mean" with a reason in "skipped"."""
    predictor = Predictor(model_dir)
    data = _encode(predictor.encoders, predictor.modalities, task, split)
    by_subset: dict[str, float | None] = {}
    mean: dict[str, float | None] = {}
    skipped: dict[str, str] = {}
    for k in range(max_withheld + 1):
        if k >= len(predictor.modalities):
            skipped[str(k)] = f"the model has {len(predictor.modalities)} modalities: nothing would be left"
            continue
        scores = []
        for combo in itertools.combinations(predictor.modalities, k):
            auc = roc_auc(data.labels, probabilities(predictor.model, data.batch.withhold(combo)))
            by_subset["+".join(combo) or "-"] = auc
            scores.append(auc)
        defined = [s for s in scores if s is not None]
        mean[str(k)] = float(np.mean(defined)) if defined else None
    return {"split": split, "by_subset": by_subset, "mean": mean, "skipped": skipped}


__all__: Sequence[str] = ("FinetuneConfig", "FinetuneResult", "TaskLike", "finetune", "robustness", "roc_auc")
