"""The typed configuration of ``dmf evaluate``: :class:`TaskSpec` and :class:`EvaluateConfig`.

pydantic v2 models: every field has a ``description`` (the CLI builds its flags and help from
them) and every problem of a config is reported in one :class:`pydantic.ValidationError` (a
``ValueError``), each naming the field and the bad value.

The CLI generates one flag per field (``--`` + the name with ``-``, or the ``flag`` in the
field's ``json_schema_extra``); list fields are repeatable flags. Text forms it hands over
unchanged: a task is ``[NAME=]PATH`` or ``[NAME=]TRAIN,VALID,TEST`` (:meth:`TaskSpec.parse`);
``label_columns`` and ``mask_rates`` accept comma-separated text and repeated values
(``["a,b", "c"]`` -> ``["a", "b", "c"]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dmf_ray.files import is_remote, redact

# Literal types so that the CLI offers them as choices and pydantic names them in its errors;
# they must equal tasks.SPLIT_NAMES and learners.LEARNER_CHOICES (a unit test checks).
Split = Literal["provided", "scaffold", "random"]
LearnerName = Literal["rf", "xgboost", "logreg", "mlp", "auto"]
Robustness = Literal["inference", "refit", "none"]
ROBUSTNESS_PROTOCOLS = ("inference", "refit", "none")
DEFAULT_MASK_RATES = (0.0, 0.2, 0.4, 0.6, 0.8)


def _comma_list(value: Any) -> Any:
    """``"a,b"`` or ``["a,b", "c"]`` -> ``["a", "b", "c"]``; anything else unchanged."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [part.strip() for v in value for part in v.split(",") if part.strip()]
    return value


class TaskSpec(BaseModel):
    """One downstream task: a name and where its data is."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="task name used in the report (unique per run)")
    source: str | list[str] = Field(
        ..., description="a folder with train/valid/test.csv, one file, or three files (train, valid, test)")
    split: Split | None = Field(
        None, description="provided | scaffold | random; None: the run's default (provided for a folder or "
                          "three files, scaffold for one file)")
    label_columns: list[str] | None = Field(None, description="label columns; None: the run's default")
    smiles_column: str | None = Field(None, description="SMILES column; None: auto-detect")
    dataset: str | None = Field(
        None, description="the dataset the labels come from, matched against what encoders were trained on "
                          "(leakage flags); None: the task name without a -scaffold/-random suffix")

    def __init__(self, name: str | None = None, source: str | list[str] | None = None, **kwargs: Any):
        # Positional (name, source) kept: TaskSpec("bbbp", "data/bbbp") reads naturally.
        if name is not None:
            kwargs["name"] = name
        if source is not None:
            kwargs["source"] = source
        super().__init__(**kwargs)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\,="):
            raise ValueError(f"task names may not be empty or contain / \\ , =: {value!r}")
        return value

    @classmethod
    def parse(cls, text: str) -> TaskSpec:
        """``[NAME=]PATH`` or ``[NAME=]TRAIN,VALID,TEST``; the name defaults to the folder or file stem.

        Raises ValueError (one line naming the text) for an empty text or a wrong number of paths.
        """
        text = text.strip()
        if not text:
            raise ValueError("empty --task; give NAME=PATH, PATH, or NAME=TRAIN,VALID,TEST")
        name, sep, rest = text.partition("=")
        if not sep or "/" in name or os.path.exists(text):
            name, rest = "", text
        parts = [p.strip() for p in rest.split(",")] if "," in rest else [rest]
        if len(parts) not in (1, 3) or not all(parts):
            raise ValueError(f"--task {text!r}: give one path (a folder or a file) or three files TRAIN,VALID,TEST")
        source: str | list[str] = parts[0] if len(parts) == 1 else parts
        return cls(name=name or _default_name(parts), source=source)


def _default_name(parts: list[str]) -> str:
    """The folder (three files, or a folder) or file stem a task is named after."""
    if is_remote(parts[0]):  # s3://bucket/tasks/bbbp?region=...: name it "bbbp"
        first = Path(parts[0].partition("?")[0].split("://", 1)[1])
        return first.parent.name if len(parts) == 3 else first.name.split(".")[0]
    first = Path(parts[0])
    if len(parts) == 3:
        return first.resolve().parent.name  # three files: their folder, as load_task does
    return first.name if first.is_dir() else first.name.split(".")[0]


class EvaluateConfig(BaseModel):
    """Everything ``dmf evaluate`` needs. Construction validates every field at once."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="model directory (config.json + model.safetensors)")
    tasks: list[TaskSpec] = Field(
        ..., json_schema_extra={"flag": "--task", "metavar": "[NAME=]PATH"},
        description="tasks, repeatable: NAME=FOLDER (train/valid/test.csv inside), NAME=TRAIN,VALID,TEST, "
                    "or one file (split with --split, scaffold by default); NAME defaults to the folder "
                    "or file name")
    out: str = Field(..., description="output folder: report.md, CSVs, PNGs, summary.json")
    seeds: int = Field(3, ge=1, description="seeds of the downstream learner (0..seeds-1)")
    split: Split | None = Field(
        None, description="default split for tasks that name none: provided (folder/three files), or scaffold | "
                          "random (computed; pools the files). Default: provided, or scaffold for one file")
    label_columns: list[str] | None = Field(
        None, json_schema_extra={"flag": "--label"},
        description="label columns (repeat or comma-separate for multi-task; default: auto-detect)")
    smiles_column: str | None = Field(None, description="SMILES column (default: auto-detect)")
    learner: LearnerName = Field(
        "rf", description="downstream learner: rf | xgboost | logreg | mlp (each a small grid chosen on valid), "
                          "or auto (per row, the learner with the best valid score)")
    paper_protocol: bool = Field(
        True, description="also report the paper's protocol (XGBoost on frozen embeddings) as its own table")
    finetune: bool = Field(
        False, description="also fine-tune the fusion model with a small head on each task (modality masking "
                           "kept on): row fusion-finetuned in Table 1, its robustness in Figure 2")
    finetune_epochs: int = Field(30, ge=1, description="most epochs of fine-tuning (the epoch best on valid is kept)")
    robustness: Robustness = Field(
        "inference", description="inference: fit on complete data, test with modalities withheld; refit: "
                                 "withhold in all splits and refit; none: skip Figure 2")
    mask_rates: list[float] = Field(
        default_factory=lambda: list(DEFAULT_MASK_RATES),
        description="mask rates of Figure 4 (attention vs mask rate), comma-separated")
    grid_every_seed: bool = Field(
        False, description="choose the learner's grid point on valid for every seed (default: seed 0, reused)")
    n_estimators: int | None = Field(
        None, ge=1, description="trees per forest / boosting rounds (None: 300, or 100 on large tasks)")
    n_jobs: int = Field(2, description="cores for each learner fit (-1: all)")
    workers: int | None = Field(
        None, ge=1, description="processes encoding molecules (None: one per core from 3,000 distinct "
                                "molecules, else in-process; 1: in-process)")
    device: str = Field("cpu", description="torch device of the fusion model")
    title: str = Field("dmf evaluate", description="report title")

    @field_validator("tasks", mode="before")
    @classmethod
    def _parse_tasks(cls, value: Any) -> Any:
        if isinstance(value, (str, TaskSpec)):
            value = [value]
        return [TaskSpec.parse(v) if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("tasks")
    @classmethod
    def _tasks_ok(cls, value: list[TaskSpec]) -> list[TaskSpec]:
        if not value:
            raise ValueError("give at least one task (--task)")
        names = [t.name for t in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task names must be unique, repeated: {dupes} (name them: --task NAME=PATH)")
        return value

    @field_validator("label_columns", "mask_rates", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("mask_rates")
    @classmethod
    def _rates_ok(cls, value: list[float]) -> list[float]:
        bad = [r for r in value if not (0.0 <= r <= 1.0)]
        if bad:
            raise ValueError(f"mask rates must be in [0, 1], got {bad}")
        return value

    @field_validator("n_jobs")
    @classmethod
    def _n_jobs_ok(cls, value: int) -> int:
        if not (value >= 1 or value == -1):
            raise ValueError(f"n_jobs must be a positive int or -1, got {value!r}")
        return value

    def task_split(self, spec: TaskSpec) -> str | None:
        """The split of ``spec``: its own, else this run's default (None: the loader's default)."""
        return spec.split or self.split

    def recorded(self) -> dict[str, Any]:
        """The config as evaluation.json records it: ``model_dump()`` with the credentials of the
        model, output and every task source removed (``s3://KEY:SECRET@b/...`` ->
        ``s3://***@b/...``, :func:`dmf_ray.files.redact`): the report may be uploaded and shared."""
        out = self.model_dump()
        out["model"], out["out"] = redact(out["model"]), redact(out["out"])
        for task in out["tasks"]:
            src = task["source"]
            task["source"] = redact(src) if isinstance(src, str) else [redact(str(s)) for s in src]
        return out
