"""What `dmf tune` takes (TuneConfig: the searched and fixed training settings, ASHA's knobs), the
train workflow as tune is handed it (TrainingEntry) and what it returns (TuneResult)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dmf_ray.model.validation import ConfigModel

TUNE_DIR = "_tune"
TUNE_FILE = "tune.json"
SEARCH_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
DOWNSTREAM_METRIC = "downstream/roc_auc"
METRICS = {"val/loss": "min", "val/cos_mean": "max", DOWNSTREAM_METRIC: "max"}
# Set by tune itself (per trial or from its own fields), or only change how a trial is computed.
NOT_SEARCHABLE = frozenset({"store", "out", "fresh", "storage_path", "epochs", "workers", "use_gpu", "cpus_per_worker",
                            "torch_threads", "max_failures", "worker_cache_mb", "data_loading"})
NOT_SETTABLE = frozenset({"store", "out", "fresh", "storage_path", "epochs"})  # TuneConfig's own fields


@dataclass(frozen=True)
class SearchDim:
    """One searched setting: a dotted TrainConfig path, a distribution kind and its arguments
    (choice/grid: the values; uniform/loguniform: low, high; randint: low, high exclusive)."""

    path: str
    kind: str
    args: tuple


def parse_value(text: str) -> Any:
    """A setting's value from text: JSON (16, 1e-3, true, "x", [..]) else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _split_assignment(item: str, what: str) -> tuple[str, str]:
    key, sep, value = str(item).partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ValueError(f"{what}: expected KEY=VALUE, got {item!r}")
    return key.strip(), value.strip()


def parse_search(item: str) -> SearchDim:
    """'lr=loguniform:1e-4:1e-2' -> SearchDim; ValueError naming the bad part."""
    path, spec = _split_assignment(item, "search")
    kind, _, rest = spec.partition(":")
    if kind not in SEARCH_KINDS:
        raise ValueError(f"search {path}: unknown kind {kind!r} (one of {', '.join(SEARCH_KINDS)})")
    if kind in ("choice", "grid"):
        values = tuple(parse_value(v.strip()) for v in rest.split(",") if v.strip())
        if not values:
            raise ValueError(f"search {path}: {kind} needs values, e.g. {kind}:64,128")
        return SearchDim(path, kind, values)
    bounds = rest.split(":")
    numbers = [parse_value(b) for b in bounds]
    if len(bounds) != 2 or not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
        raise ValueError(f"search {path}: {kind} needs two numbers LOW:HIGH, got {rest!r}")
    low, high = numbers
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise ValueError(f"search {path}: randint needs integers, got {rest!r}")
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ValueError(f"search {path}: {kind} needs {'0 < ' if kind == 'loguniform' else ''}LOW < HIGH, got {rest!r}")
    return SearchDim(path, kind, (low, high))


def _as_items(value: Any, prefix: str = "") -> Any:
    # The Python API may pass a (nested) mapping; the CLI passes repeated KEY=VALUE strings.
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            key = f"{prefix}{k}"
            items += _as_items(v, f"{key}.") if isinstance(v, Mapping) else [f"{key}={json.dumps(v)}"]
        return items
    return [value] if isinstance(value, str) else value


class TuneConfig(ConfigModel):
    """Everything `dmf tune` takes. Raises ConfigError (a ValueError) naming every problem."""

    store: str = Field(description="embedding store every trial trains on (local path or URI)")
    out: str = Field(description="local directory for the best trial's model (the format of `dmf train --out`), "
                                 f"tune.json and the trials ({TUNE_DIR}/)")
    search: list[str] = Field(
        description="a searched training setting, KEY=KIND:ARGS (repeatable): KEY a TrainConfig field, dotted for "
                    "nested ones (lr, model.latent_dim, masking.p_end, model.align_weight); KIND one of "
                    "choice:A,B,..  grid:A,B,..  uniform:LOW:HIGH  loguniform:LOW:HIGH  randint:LOW:HIGH (HIGH excluded)")
    settings: list[str] = Field(
        default_factory=list,
        description="a fixed training setting for every trial, KEY=VALUE (repeatable; VALUE as JSON), e.g. "
                    "batch_size=128, model.latent_dim=64, workers=1")
    epochs: int = Field(10, ge=1, strict=True, description="epochs of a trial that is not stopped (ASHA's max_t)")
    num_samples: int = Field(4, ge=1, strict=True,
                             description="trials drawn from the search (each grid point is run this many times)")
    tasks: list[str] = Field(
        default_factory=list,
        description="a downstream objective task, NAME=SOURCE or SOURCE (repeatable): a folder with train/valid/test "
                    "CSVs or one CSV (scaffold-split), binary labels; every epoch of every trial, a logistic regression "
                    "on the trial's fused vectors is fitted on its train split and scored on its valid split "
                    f"({DOWNSTREAM_METRIC}: the mean valid ROC-AUC over tasks); its test split is never read")
    metric: Literal["val/loss", "val/cos_mean", "downstream/roc_auc"] = Field(
        "val/loss", description="objective, on validation data: val/loss (minimised), val/cos_mean or "
                                f"{DOWNSTREAM_METRIC} (maximised; needs --task); default: {DOWNSTREAM_METRIC} when "
                                "a task is given, else val/loss")
    grace_period: int = Field(1, ge=1, strict=True, description="epochs every trial runs before ASHA may stop it")
    reduction_factor: float = Field(2.0, gt=1, strict=True, allow_inf_nan=False,
                                    description="ASHA keeps the best 1/reduction_factor of trials at each rung")
    max_concurrent_trials: int = Field(
        1, ge=1, strict=True, description="trials run at once (each takes its Ray Train workers' CPUs)")
    seed: int = Field(0, ge=0, strict=True, description="seed of the search's random draws")
    fresh: bool = Field(False, strict=True, description="discard what out holds and search again")

    @field_validator("search", "settings", mode="before")
    @classmethod
    def _items(cls, value: Any) -> Any:
        return _as_items(value)

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _fill_metric(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "metric" not in data:
            return {**data, "metric": _default_metric(data)}
        return data

    @classmethod
    def cross_problems(cls, data: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        searched: list[SearchDim] = []
        for item in _as_items(data.get("search")) or []:
            try:
                searched.append(parse_search(item))
            except ValueError as exc:
                problems.append(str(exc))
        paths = [d.path for d in searched]
        problems += [f"search {p}: set by tune or operational, not searchable" for p in paths if p in NOT_SEARCHABLE]
        problems += [f"search {p}: listed twice" for p in sorted({p for p in paths if paths.count(p) > 1})]
        for item in _as_items(data.get("settings")) or []:
            try:
                key, _ = _split_assignment(item, "settings")
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if key in NOT_SETTABLE:
                problems.append(f"settings {key}: use tune's own {key} field")
            elif key in paths:
                problems.append(f"settings {key}: also searched")
        metric = data.get("metric", _default_metric(data))
        if metric == DOWNSTREAM_METRIC and not data.get("tasks"):
            problems.append(f"metric: {DOWNSTREAM_METRIC} needs at least one task (--task NAME=FOLDER)")
        if metric == "val/loss" and any(p.endswith("_weight") for p in paths):
            problems.append("metric: val/loss depends on the loss weights being searched; use val/cos_mean")
        if isinstance(data.get("out"), str) and "://" in data["out"]:
            problems.append(f"out: must be a local directory, got {data['out']!r}")
        return problems

    def dims(self) -> list[SearchDim]:
        return [parse_search(item) for item in self.search]

    def fixed(self) -> dict[str, Any]:
        """The fixed settings as a nested dict (dotted keys opened up)."""
        nested: dict[str, Any] = {}
        for item in self.settings:
            key, value = _split_assignment(item, "settings")
            set_path(nested, key, parse_value(value))
        return nested


def _default_metric(data: Mapping[str, Any]) -> str:
    return DOWNSTREAM_METRIC if data.get("tasks") else "val/loss"


def set_path(nested: dict[str, Any], path: str, value: Any) -> None:
    """nested['model']['latent_dim'] = value for path 'model.latent_dim'."""
    *parents, leaf = path.split(".")
    for part in parents:
        nested = nested.setdefault(part, {})
    nested[leaf] = value


@dataclass(frozen=True)
class TrainingEntry:
    """The train workflow as tune uses it, handed in by the caller (see the module doc):
    ``config_class`` TrainConfig; ``train(config, log=..., callbacks=[...])`` returning an object
    with ``model_dir``; ``check(config, log)`` raising ValueError for a store or modality problem
    and returning an object with ``names``, ``dims``, ``store.modalities`` (encoder specs) and
    ``fusion_config()`` (the model's FusionConfig as train() builds it).
    The downstream objective (``tasks``) also needs ``check`` and ``load_checkpoint(directory,
    device)`` -> ``(weights, optimizer, state)``, to score each epoch's checkpoint."""

    config_class: type
    train: Callable[..., Any]
    check: Callable[..., Any] | None = None
    load_checkpoint: Callable[..., Any] | None = None


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]  # the searched settings, by dotted path
    epochs_run: int
    stopped_early: bool  # by ASHA (ran fewer epochs than asked, without an error)
    metric: float | None  # the objective at the trial's last epoch
    history: list[float | None]  # the objective per epoch
    seconds: float | None  # wall time of the trial (Tune's time_total_s)
    error: str | None = None
    model_dir: str | None = None
    final: dict[str, float | None] = field(default_factory=dict)  # the last report's objective-like metrics


@dataclass
class TuneResult:
    model_dir: str  # out: the best trial's model
    best: TrialRecord
    trials: list[TrialRecord] = field(default_factory=list)
    metric: str = "val/loss"
    mode: str = "min"
    seconds: float = 0.0
    summary_file: str = ""
    objective: dict[str, Any] | None = None  # the downstream objective's record (tasks, learner, splits read)
