"""``dmf evaluate``: downstream benchmarks of a fusion model, robustness, reconstruction, attention.

One run computes, for every task, on the same splits with the same downstream learner
(:mod:`dmf_ray.pipelines.evaluate.downstream`, a random forest whose grid point is chosen on valid):

- Table 1: each single modality (raw encoder output), every concatenation of 2..M modalities,
  and ``fusion`` (the model's fused vector from all modalities); test metric over seeds.
- Figure 2: fusion and the all-modality concatenation when modalities are withheld
  (:func:`dmf_ray.pipelines.evaluate.report.removal_patterns`: each modality, each pair, random 25%).
- Figure 3: cosine between a hidden modality and its reconstruction from the others.
- Figures 4-5: mean attention per modality, and how it moves as modalities are masked.

Choices that decide how to read the numbers (also written into ``report.md``):

Robustness protocol. ``inference`` (default): the downstream learner is fitted on the complete
train split (the very model of the Table 1 row) and scored on a test split whose modalities
are withheld; fusion re-embeds the test molecules with those modalities marked absent, the
concatenation mean-imputes the withheld blocks with the train means. That is the situation the
paper's claim is about (a model deployed on inputs that turn out incomplete) and the one
where fusion and concatenation differ in kind: the fused vector stays in the space the learner
was trained on, a mean-imputed block does not. ``refit`` withholds the modalities from every
split and refits the learner (at the grid point its Table 1 row chose) on the degraded
features: it measures how much information is left, not robustness; concatenation then
degenerates to the concatenation of the remaining modalities. ``inference`` is also free (the degraded test sets are scored by the Table 1
models), where ``refit`` costs one fit per pattern, method and seed.

Reconstruction space. Cosine is computed in the model's normalised space (each feature
standardised with the training statistics stored in the model, the space the reconstruction
loss is minimised in): predicting the mean scores 0 there. In raw space every count
fingerprint is non-negative and the descriptor vector is dominated by its largest-scale
features (molecular weight, surface area), so even the training-set mean scores ~0.7-0.99;
raw-space cosines are reported beside as a secondary figure. Features whose std sits at the
model's floor (``FusionConfig.std_floor``: constant in the data the statistics came from) are
left out of the normalised cosine: dividing by the floor turns any deviation into ~1e6 and one
such feature would decide the cosine. (``dmf train`` gives constant features std 1 instead, so
for its models nothing is left out.)

Seeds. The fusion model is one fixed model; seeds vary the downstream forest (and the random
choices of ``random25`` and the mask-rate sweep). The grid point is chosen on valid for the
first seed and reused for the others (``grid_every_seed`` redoes it per seed, ~2x the time).

Featurisation. Every distinct SMILES of all tasks is parsed and encoded once per modality
with the model's own encoders (rebuilt from ``config.json``), in a process pool across cores
(no Ray needed). A row whose SMILES does not parse, or whose encoder fails, is kept: its
features are NaN and imputed with the train column mean; it is counted in ``report.md``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from dmf_ray.files import redact
from dmf_ray.pipelines.evaluate import downstream as _downstream
from dmf_ray.pipelines.evaluate import metrics as _metrics
from dmf_ray.pipelines.evaluate import report as _report
from dmf_ray.pipelines.evaluate import tasks as _tasks
from dmf_ray.pipelines.evaluate.features import MoleculeFeatures, featurize_smiles
from dmf_ray.files import fetch, is_remote, staging_dir, upload_tree

SPLITS = _tasks.SPLITS
ROBUSTNESS_PROTOCOLS = ("inference", "refit", "none")
DEFAULT_MASK_RATES = (0.0, 0.2, 0.4, 0.6, 0.8)
EXTRA_FILES = {"details": "evaluation.json"}


# --------------------------------------------------------------------------- config


@dataclass
class TaskSpec:
    """One downstream task: a name and where its data is."""

    name: str = field(metadata={"help": "task name used in the report (unique per run)"})
    source: str | list[str] = field(
        metadata={"help": "a folder with train/valid/test.csv, one file, or three files (train, valid, test)"}
    )
    split: str | None = field(
        default=None,
        metadata={"help": "provided | scaffold | random; None: the run's default (provided for a folder or "
                          "three files, scaffold for one file)"},
    )
    label_columns: list[str] | None = field(default=None, metadata={"help": "label columns; None: the run's default"})
    smiles_column: str | None = field(default=None, metadata={"help": "SMILES column; None: auto-detect"})

    @classmethod
    def parse(cls, text: str) -> TaskSpec:
        """``[NAME=]PATH`` or ``[NAME=]TRAIN,VALID,TEST``; the name defaults to the folder or file stem."""
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
        if not name and is_remote(parts[0]):  # s3://bucket/tasks/bbbp?region=...: name it "bbbp"
            first = Path(parts[0].partition("?")[0].split("://", 1)[1])
            name = first.parent.name if len(parts) == 3 else first.name.split(".")[0]
        elif not name:
            first = Path(parts[0])
            if len(parts) == 3:
                name = first.resolve().parent.name  # three files: their folder, as load_task does
            else:
                name = first.name if first.is_dir() else first.name.split(".")[0]
        return cls(name=name, source=source)


@dataclass
class EvaluateConfig:
    """Everything ``dmf evaluate`` needs; :meth:`validate` reports every problem at once."""

    model: str = field(metadata={"help": "model directory (config.json + model.safetensors)"})
    tasks: list[TaskSpec] = field(metadata={"help": "tasks to evaluate"})
    out: str = field(metadata={"help": "output folder for report.md, CSVs, PNGs, summary.json"})
    seeds: int = field(default=3, metadata={"help": "seeds of the downstream learner (0..seeds-1)"})
    split: str | None = field(
        default=None, metadata={"help": "default split for tasks that name none: provided | scaffold | random"}
    )
    label_columns: list[str] | None = field(default=None, metadata={"help": "default label columns (None: auto)"})
    smiles_column: str | None = field(default=None, metadata={"help": "default SMILES column (None: auto)"})
    robustness: str = field(
        default="inference",
        metadata={"help": "inference: fit on complete data, test on degraded; refit: degrade all splits "
                          "and refit; none: skip Figure 2"},
    )
    mask_rates: list[float] = field(
        default_factory=lambda: list(DEFAULT_MASK_RATES), metadata={"help": "mask rates of Figure 4"}
    )
    grid_every_seed: bool = field(
        default=False, metadata={"help": "choose the forest's grid point on valid for every seed, not only the first"}
    )
    n_estimators: int | None = field(default=None, metadata={"help": "trees per forest (None: 300, or 100 on large tasks)"})
    n_jobs: int = field(default=2, metadata={"help": "cores for each forest fit"})
    workers: int | None = field(
        default=None,
        metadata={"help": "processes encoding molecules (None: one per core when there are >= 3,000 "
                          "distinct molecules, else in-process; 1: in-process)"},
    )
    device: str = field(default="cpu", metadata={"help": "torch device of the fusion model"})
    title: str = field(default="dmf evaluate", metadata={"help": "report title"})

    def __post_init__(self) -> None:
        self.tasks = [TaskSpec.parse(t) if isinstance(t, str) else t for t in self.tasks]
        if isinstance(self.label_columns, str):
            self.label_columns = [self.label_columns]
        self.mask_rates = [float(r) for r in self.mask_rates]

    def validate(self) -> None:
        problems: list[str] = []
        if not self.tasks:
            problems.append("give at least one task (--task)")
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"task names must be unique, repeated: {dupes} (name them: --task NAME=PATH)")
        bad_names = [n for n in names if not n or any(c in n for c in "/\\,=")]
        if bad_names:
            problems.append(f"task names may not be empty or contain / \\ , =: {bad_names}")
        for t in self.tasks:
            split = t.split or self.split
            if split is not None and split not in _tasks.SPLIT_NAMES:
                problems.append(f"task {t.name!r}: split must be one of {_tasks.SPLIT_NAMES}, got {split!r}")
        if not (isinstance(self.seeds, int) and self.seeds >= 1):
            problems.append(f"seeds must be an int >= 1, got {self.seeds!r}")
        if self.robustness not in ROBUSTNESS_PROTOCOLS:
            problems.append(f"robustness must be one of {ROBUSTNESS_PROTOCOLS}, got {self.robustness!r}")
        bad_rates = [r for r in self.mask_rates if not (0.0 <= r <= 1.0)]
        if bad_rates:
            problems.append(f"mask rates must be in [0, 1], got {bad_rates}")
        if self.n_estimators is not None and not (isinstance(self.n_estimators, int) and self.n_estimators >= 1):
            problems.append(f"n_estimators must be a positive int, got {self.n_estimators!r}")
        if not (isinstance(self.n_jobs, int) and (self.n_jobs >= 1 or self.n_jobs == -1)):
            problems.append(f"n_jobs must be a positive int or -1, got {self.n_jobs!r}")
        if self.workers is not None and not (isinstance(self.workers, int) and self.workers >= 1):
            problems.append(f"workers must be a positive int, got {self.workers!r}")
        if problems:
            raise ValueError("invalid evaluate config:\n  - " + "\n  - ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvaluateResult:
    out: Path
    files: dict[str, Path]
    results: list[_report.TaskResult]
    summary: dict
    details: dict
    seconds: float


# --------------------------------------------------------------------------- per-task data


@dataclass
class _TaskData:
    """One task's rows (train, valid, test stacked) aligned with their features."""

    task: _tasks.Task
    modalities: list[str]
    slices: dict[str, slice]
    values: dict[str, np.ndarray]  # [N, d_m] encoder dtype
    present: np.ndarray  # [N, M]
    labels: dict[str, np.ndarray]
    mol_ids: list[str | None]

    @property
    def n(self) -> int:
        return len(self.present)

    def split_of(self, split: str) -> np.ndarray:
        s = self.slices[split]
        return np.arange(s.start, s.stop)


def _task_data(task: _tasks.Task, feats: MoleculeFeatures) -> _TaskData:
    smiles = [s for split in SPLITS for s in task.smiles[split]]
    rows = feats.rows(smiles)
    slices, start = {}, 0
    for split in SPLITS:
        slices[split] = slice(start, start + len(task.smiles[split]))
        start += len(task.smiles[split])
    return _TaskData(
        task=task,
        modalities=list(feats.modalities),
        slices=slices,
        values={m: v[rows] for m, v in feats.values.items()},
        present=feats.present[rows],
        labels=task.labels,
        mol_ids=[feats.mol_ids[r] for r in rows],
    )


def _block(data: _TaskData, modalities: Sequence[str], keep: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Concatenated raw features [len(rows), sum d] float32 with NaN where ``keep`` is False."""
    rows = np.arange(data.n) if rows is None else rows
    parts = []
    for m in modalities:
        j = data.modalities.index(m)
        x = data.values[m][rows].astype(np.float32)
        x[~keep[rows, j]] = np.nan
        parts.append(x)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _fused(model, data: _TaskData, keep: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Fused vectors [len(rows), d] from the kept modalities; NaN rows where nothing is kept."""
    from dmf_ray.inference import fuse_arrays

    rows = np.arange(data.n) if rows is None else rows
    vis = keep[rows]
    out = fuse_arrays(model, {m: data.values[m][rows] for m in data.modalities}, vis).fused
    out[~vis.any(axis=1)] = np.nan
    return out


def _splits_of(X: np.ndarray, data: _TaskData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(X[data.slices[s]] for s in SPLITS)  # type: ignore[return-value]


# --------------------------------------------------------------------------- fitting


def _fit(
    data: _TaskData,
    X: np.ndarray,
    seed: int,
    params: dict | None,
    config: EvaluateConfig,
    degraded_tests: Sequence[np.ndarray] = (),
) -> tuple[dict, list[float]]:
    """fit_and_score on X (all rows); also scores the same fitted forest on ``degraded_tests``.

    The degraded test matrices are stacked under the real test split, so the forest chosen on
    valid predicts them in the same call (no refit); each block is then scored on its own.
    """
    X_train, X_valid, X_test = _splits_of(X, data)
    y = data.labels
    kind = data.task.kind
    if degraded_tests:
        X_test = np.concatenate([X_test, *degraded_tests], axis=0)
        y_test = np.concatenate([y["test"]] * (1 + len(degraded_tests)), axis=0)
    else:
        y_test = y["test"]
    fit = _downstream.fit_and_score(
        X_train, y["train"], X_valid, y["valid"], X_test, y_test, kind, seed,
        params=params, n_estimators=config.n_estimators, n_jobs=config.n_jobs,
        return_predictions=bool(degraded_tests),
    )
    extra: list[float] = []
    if degraded_tests:
        n_test = len(y["test"])
        preds = fit["predictions"]["test"]
        metric = fit["metric"]
        blocks = [_metrics.score(y["test"], preds[k * n_test : (k + 1) * n_test], kind) for k in range(1 + len(degraded_tests))]
        fit["test"], fit["test_metric"] = blocks[0], blocks[0][metric]
        extra = [b[metric] for b in blocks[1:]]
        del fit["predictions"]
    return fit, extra


# --------------------------------------------------------------------------- analyses


def _normalised_cosine(model, j: int, recon: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Mean row cosine in the model's normalised space (features with std at the floor left out)
    and in raw space."""
    mean, std = model.get_normalization()[model.config.modalities[j]]
    floor = model.config.std_floor
    informative = std > floor * 1.0001
    a = (recon.astype(np.float64) - mean) / np.maximum(std, floor)
    b = (target.astype(np.float64) - mean) / np.maximum(std, floor)
    return _row_cosine(a[:, informative], b[:, informative]), _row_cosine(recon, target)


def _row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(1)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return float(cos.mean()) if cos.size else float("nan")


def _reconstruction(model, data: _TaskData) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    """Per modality: hide it on the test molecules that have it and at least one other modality,
    reconstruct it from the fused vector of the others, compare with the true vector."""
    from dmf_ray.inference import fuse_arrays

    rows = data.split_of("test")
    present = data.present[rows]
    norm_cos, raw_cos, counts = {}, {}, {}
    for j, m in enumerate(data.modalities):
        others = np.delete(present, j, axis=1).any(axis=1)
        use = rows[present[:, j] & others]
        counts[m] = int(use.size)
        if use.size == 0:
            continue
        vis = data.present[use].copy()
        vis[:, j] = False
        out = fuse_arrays(model, {x: data.values[x][use] for x in data.modalities}, vis, with_reconstructions=True)
        norm_cos[m], raw_cos[m] = _normalised_cosine(model, j, out.reconstructions[j], data.values[m][use])
    return norm_cos, raw_cos, counts


def _attention(model, data: _TaskData, rates: Sequence[float], seeds: Sequence[int]) -> tuple[dict, dict]:
    """Mean attention per modality on the test molecules (all their modalities visible), and the
    same with present modalities hidden at rate p (``sample_training_mask``), averaged over seeds."""
    import torch

    from dmf_ray.inference import fuse_arrays
    from dmf_ray.model import sample_training_mask

    rows = data.split_of("test")
    present = data.present[rows]
    has = present.any(axis=1)
    values = {m: data.values[m][rows] for m in data.modalities}
    if not has.any():
        return {}, {}

    def mean_attention(vis: np.ndarray) -> np.ndarray:
        att = fuse_arrays(model, values, vis).attention
        return att[has].mean(axis=0)

    full = mean_attention(present)
    by_rate = {}
    for p in rates:
        acc = np.zeros(len(data.modalities))
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            masked = sample_training_mask(torch.from_numpy(present), float(p), generator=gen).numpy()
            acc += mean_attention(present & ~masked)
        by_rate[float(p)] = {m: float(v) for m, v in zip(data.modalities, acc / len(seeds))}
    return {m: float(v) for m, v in zip(data.modalities, full)}, by_rate


# --------------------------------------------------------------------------- corpus


def training_corpus(card: Mapping) -> dict[str, Any]:
    """What the model card says about the training run (store, args), JSON-friendly."""
    training = card.get("training")
    if not isinstance(training, Mapping):
        return {"store": None, "note": "the model card has no 'training' section"}
    store = next((training.get(k) for k in ("store", "store_uri", "corpus") if training.get(k)), None)
    info = {"store": store, "args": training.get("args")}
    for k, v in training.items():
        if k not in info and isinstance(v, (str, int, float, bool)):
            info[k] = v
    return info


def _corpus_ids(store_uri: str | None) -> tuple[set[str] | None, str]:
    """The molecule ids of the training store, and a line saying what the corpus is."""
    if not store_uri:
        return None, "unknown: the model card names no training store"
    from dmf_ray.store import EmbeddingStore

    try:
        table = EmbeddingStore.open(str(store_uri)).molecules_table(["mol_id", "source"])
    except Exception as exc:  # noqa: BLE001 - a store on another machine: say so, do not fail the run
        return None, f"unknown: training store {store_uri} not readable here ({type(exc).__name__}: {exc})"
    ids = set(table.column("mol_id").to_pylist())
    sources = sorted(set(table.column("source").to_pylist()))
    shown = ", ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
    return ids, f"{len(ids):,} distinct molecules in store {store_uri} (inputs: {shown or 'none'})"


def _overlap(data: _TaskData, corpus: set[str] | None) -> dict[str, int] | None:
    if corpus is None:
        return None
    return {s: int(sum(1 for i in data.split_of(s) if data.mol_ids[i] in corpus)) for s in SPLITS}


# --------------------------------------------------------------------------- orchestration


def load_tasks(config: EvaluateConfig) -> list[_tasks.Task]:
    """Load every task of ``config`` (raises TaskError / FileNotFoundError naming the problem)."""
    loaded = []
    for spec in config.tasks:
        # Task files on s3:// (or any remote filesystem) are small: read local copies.
        source = (str(fetch(spec.source)) if isinstance(spec.source, str)
                  else [str(fetch(str(p))) for p in spec.source])
        loaded.append(
            _tasks.load_task(
                source,
                smiles_column=spec.smiles_column or config.smiles_column,
                label_columns=spec.label_columns or config.label_columns,
                split=spec.split or config.split,
                name=spec.name,
            )
        )
    return loaded


def evaluate(config: EvaluateConfig, log: Callable[[str], None] = print) -> EvaluateResult:
    """Run the whole evaluation and write the report into ``config.out``; see the module docstring."""
    from dmf_ray.artifact import read_model_config
    from dmf_ray.inference import FusionEmbedder

    started = time.perf_counter()
    config.validate()
    if is_remote(config.out):  # write the report locally, copy it there after each task
        publish_to = config.out
        config = replace(config, out=str(staging_dir(config.out)))
    else:
        publish_to = None
    read_model_config(config.model)  # a bad model dir fails before any task is read
    t0 = time.perf_counter()
    loaded = load_tasks(config)
    log(f"evaluate: loaded {len(loaded)} task(s) in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{t.name} ({t.kind}, {t.split_name} split, {sum(t.sizes.values()):,} rows, "
                    f"{t.n_tasks} label(s))" for t in loaded))
    embedder = FusionEmbedder(config.model, device=config.device)
    model, card = embedder.model, embedder.card
    mods = list(embedder.modalities)
    specs = {m: card["modalities"][m] for m in mods}
    corpus = training_corpus(card)
    corpus_ids, corpus_note = _corpus_ids(corpus.get("store"))
    log(f"evaluate: model {redact(config.model)}: modalities {', '.join(mods)}, latent {model.config.latent_dim}; "
        f"trained on {corpus_note}")

    all_smiles = [s for t in loaded for split in SPLITS for s in t.smiles[split]]
    feats = featurize_smiles(all_smiles, specs, workers=config.workers, log=log)
    n_bad = sum(1 for i in feats.mol_ids if i is None)
    log(f"evaluate: featurized {len(feats.mol_ids):,} distinct SMILES ({n_bad:,} invalid) with "
        f"{feats.workers} process(es) in {feats.seconds:.1f} s ({len(feats.mol_ids) / max(feats.seconds, 1e-9):,.0f}/s); "
        "encoder failures: " + ", ".join(f"{m} {k}" for m, k in feats.encoder_errors.items()))

    details = {
        "model": {
            "dir": redact(str(config.model)),
            "modalities": mods,
            "latent_dim": model.config.latent_dim,
            "encoders": specs,
            "training": corpus,
            "training_corpus": corpus_note,
        },
        "protocol": _protocol(config),
        "featurize": {
            "distinct_smiles": len(feats.mol_ids),
            "invalid_smiles": n_bad,
            "encoder_failures": feats.encoder_errors,
            "workers": feats.workers,
            "seconds": round(feats.seconds, 2),
        },
        "tasks": {},
        "config": config.to_dict(),
    }
    seeds = list(range(config.seeds))
    results: list[_report.TaskResult] = []
    for i, task in enumerate(loaded):
        result, info = _evaluate_task(task, feats, model, mods, seeds, config, corpus_ids, log)
        results.append(result)
        details["tasks"][task.name] = info
        details["seconds"] = round(time.perf_counter() - started, 1)
        if i + 1 < len(loaded):  # a long benchmark keeps what it has if a later task fails
            _write_outputs(config, results, details, partial=True)
            if publish_to:
                upload_tree(config.out, publish_to)
    files, doc = _write_outputs(config, results, details)
    if publish_to:
        upload_tree(config.out, publish_to)
    log(f"evaluate: wrote {redact(publish_to or config.out)}/ ({len(files)} files) in {details['seconds']:.0f} s")
    return EvaluateResult(Path(config.out), files, results, doc, details, details["seconds"])


def _write_outputs(config: EvaluateConfig, results, details: dict, partial: bool = False) -> tuple[dict, dict]:
    """Every output file: the report writer's, then summary.json with the model, protocol and
    per-task extras added, evaluation.json, and our sections appended to report.md."""
    out = Path(config.out)
    title = config.title + (f" (partial: {len(results)} of {len(config.tasks)} tasks so far)" if partial else "")
    files = _report.write_report(results, out, title=title)
    doc = _report.summary(results)
    doc["model"] = {k: details["model"][k] for k in ("dir", "modalities", "latent_dim", "training", "training_corpus")}
    doc["protocol"] = details["protocol"]
    for name, info in details["tasks"].items():
        doc["tasks"][name]["training_overlap"] = info["training_overlap"]
        doc["tasks"][name]["reconstruction_cosine_raw"] = info["reconstruction_cosine_raw"]
        doc["tasks"][name]["featureless_rows"] = info["featureless_rows"]
    doc["seconds"] = details["seconds"]
    _write_json(files["summary"], doc)
    files["details"] = out / EXTRA_FILES["details"]
    _write_json(files["details"], details)
    with open(files["report"], "a") as fh:
        fh.write(_markdown_extra(details, results))
    return files, doc


def _write_json(path: Path, doc: dict) -> None:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, np.integer)):
            return clean(x.item())
        return x

    with open(path, "w") as fh:
        json.dump(clean(doc), fh, indent=2, allow_nan=False)
        fh.write("\n")


def _protocol(config: EvaluateConfig) -> dict:
    return {
        "seeds": config.seeds,
        "downstream": "random forest (dmf_ray.pipelines.evaluate.downstream), grid point chosen on valid "
                      + ("for every seed" if config.grid_every_seed else "for seed 0 and reused"),
        "robustness": config.robustness,
        "reconstruction_space": "normalised (model statistics; features with std at the floor left out); raw beside",
        "mask_rates": config.mask_rates,
        "attention_split": "test",
    }


def _evaluate_task(task, feats, model, mods, seeds, config, corpus_ids, log):
    name = task.name
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    result = _report.TaskResult.for_task(task)
    data = _task_data(task, feats)
    featureless = {s: int((~data.present[data.slices[s]].any(axis=1)).sum()) for s in SPLITS}
    absent = {m: {s: int((~data.present[data.slices[s], j]).sum()) for s in SPLITS} for j, m in enumerate(mods)}
    timings["prepare"] = time.perf_counter() - t0
    log(f"[{name}] {task.kind}, {task.split_name} split, train/valid/test {'/'.join(str(task.sizes[s]) for s in SPLITS)}; "
        f"invalid SMILES {'/'.join(str(v) for v in task.n_invalid_smiles.values())}; featureless rows "
        f"{'/'.join(str(v) for v in featureless.values())} (kept, imputed); "
        f"test scaffolds in train {result.scaffold_overlap}")

    full = data.present
    patterns = _report.removal_patterns(mods) if len(mods) >= 2 and config.robustness != "none" else []
    test_rows = data.split_of("test")

    def test_keep(pattern, seed) -> np.ndarray:
        keep = full.copy()
        keep[test_rows] = _report.removal_mask(pattern, mods, len(test_rows), seed, present=full[test_rows])
        return keep

    # -- Table 1 (and, for the inference protocol, Figure 2 from the same fits)
    t0 = time.perf_counter()
    rows: list[tuple[str, tuple[str, ...]]] = [(m, (m,)) for m in mods]
    rows += [("+".join(c), c) for c in _report.concat_rows(mods)]
    rows.append((_report.FUSION, ()))
    all_concat = "+".join(mods) if len(mods) > 1 else None
    chosen: dict[str, dict] = {}
    for row, combo in rows:
        r0 = time.perf_counter()
        X = _fused(model, data, full) if row == _report.FUSION else _block(data, combo, full)
        method = "fusion" if row == _report.FUSION else ("concat" if row == all_concat else None)
        fixed: dict[str, np.ndarray] = {}  # fixed patterns degrade the same way for every seed
        for seed in seeds:
            degraded = []
            if method and config.robustness == "inference":
                for p in patterns:
                    if p.name not in fixed:
                        keep = test_keep(p, seed)
                        X_p = (_fused(model, data, keep, test_rows) if method == "fusion"
                               else _block(data, mods, keep, test_rows))
                        if p.random_fraction > 0:
                            degraded.append(X_p)
                            continue
                        fixed[p.name] = X_p
                    degraded.append(fixed[p.name])
            params = None if (seed == seeds[0] or config.grid_every_seed) else chosen.get(row)
            f0 = time.perf_counter()
            fit, extra = _fit(data, X, seed, params, config, degraded)
            if time.perf_counter() - f0 > 15:  # large tasks: show progress within a row
                log(f"[{name}] {row} seed {seed}: {result.metric} {fit['test_metric']:.3f} "
                    f"({time.perf_counter() - f0:.0f} s)")
            chosen.setdefault(row, fit["params"])
            result.add_fit(row, fit)
            for p, value in zip(patterns, extra):
                result.add_robustness(p.name, method, value)
        m, s = _report.mean_std(result.rows[row])
        log(f"[{name}] {row:<24} {result.metric} {m:.3f} ± {s:.3f} ({len(seeds)} seed(s), {time.perf_counter() - r0:.1f} s)")
        del X
    timings["table1"] = time.perf_counter() - t0

    # -- Figure 2 with the refit protocol
    if patterns and config.robustness == "refit":
        t0 = time.perf_counter()
        for p in patterns:
            r0 = time.perf_counter()
            for method in ("fusion", "concat"):
                for seed in seeds:
                    keep = _report.removal_mask(p, mods, data.n, seed, present=full)
                    X = _fused(model, data, keep) if method == "fusion" else _block(data, mods, keep)
                    row = _report.FUSION if method == "fusion" else all_concat
                    params = None if config.grid_every_seed else chosen.get(row)
                    fit, _ = _fit(data, X, seed, params, config)
                    result.add_robustness(p.name, method, fit["test_metric"])
            log(f"[{name}] refit {p.name:<18} fusion {_report.mean_std(result.robustness[p.name]['fusion'])[0]:.3f} "
                f"concat {_report.mean_std(result.robustness[p.name]['concat'])[0]:.3f} ({time.perf_counter() - r0:.1f} s)")
        timings["robustness"] = time.perf_counter() - t0
    if patterns:
        log(f"[{name}] robustness ({config.robustness}): " + ", ".join(
            f"{p} {_report.mean_std(v['fusion'])[0]:.3f}/{_report.mean_std(v['concat'])[0]:.3f}"
            for p, v in result.robustness.items()) + " (fusion/concat)")

    # -- Figures 3-5
    t0 = time.perf_counter()
    norm_cos, raw_cos, counts = _reconstruction(model, data) if len(mods) >= 2 else ({}, {}, {})
    result.reconstruction_cosine = norm_cos
    result.attention, result.attention_vs_mask_rate = _attention(model, data, config.mask_rates, seeds)
    timings["reconstruction_attention"] = time.perf_counter() - t0
    log(f"[{name}] reconstruction cosine (normalised/raw): "
        + ", ".join(f"{m} {norm_cos[m]:.3f}/{raw_cos[m]:.3f}" for m in norm_cos)
        + "; attention: " + ", ".join(f"{m} {v:.2f}" for m, v in result.attention.items()))

    overlap = _overlap(data, corpus_ids)
    info = {
        "kind": task.kind,
        "split": task.split_name,
        "labels": task.label_names,
        "label_source": task.label_source,
        "sources": task.sources,
        "sizes": task.sizes,
        "invalid_smiles": task.n_invalid_smiles,
        "featureless_rows": featureless,
        "absent_entries": absent,
        "training_overlap": overlap,
        "reconstruction_cosine_raw": raw_cos,
        "reconstruction_molecules": counts,
        "chosen_params": chosen,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    log(f"[{name}] done in {sum(timings.values()):.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    return result, info


_KEY_SETTINGS = ("epochs", "n_train", "n_valid", "latent_dim", "batch_size", "lr", "mask_kind", "mask_p_start",
                 "mask_p_end", "seed", "finished_at")


def _markdown_extra(details: dict, results: Sequence[_report.TaskResult]) -> str:
    model, proto = details["model"], details["protocol"]
    training = model["training"]
    lines = ["", "## Model and pretraining corpus", "",
             f"- model: `{model['dir']}`, modalities {', '.join(model['modalities'])}, fused dim {model['latent_dim']}",
             f"- trained on: {model['training_corpus']}"]
    settings = {k: v for k, v in training.items() if k not in ("store", "note") and v is not None}
    if any(k in settings for k in _KEY_SETTINGS):  # the rest is in evaluation.json
        settings = {k: settings[k] for k in _KEY_SETTINGS if k in settings}
    if training.get("note"):
        lines.append(f"- note: {training['note']}")
    if settings:
        lines.append(f"- training settings: `{json.dumps(settings, sort_keys=True, default=str)}`")
    lines += ["", "Task molecules that are also in the training corpus (train/valid/test); 0 everywhere means "
              "the model never saw the task's molecules:", "", "| task | in training corpus |", "|---|---|"]
    for r in results:
        ov = details["tasks"][r.task]["training_overlap"]
        cell = "unknown" if ov is None else " / ".join(f"{ov[s]} of {r.n_molecules[s]}" for s in SPLITS)
        lines.append(f"| {r.task} | {cell} |")
    lines += ["", "## Protocol", "",
              f"- downstream: {proto['downstream']}; {proto['seeds']} seed(s) of the forest (the fusion model is one fixed model).",
              f"- robustness (Figure 2): `{proto['robustness']}`. " + {
                  "inference": "The forest of the Table 1 row (fitted on complete train data, chosen on valid) "
                               "predicts test molecules whose modalities are withheld: fusion re-embeds them with "
                               "those modalities marked absent; concat mean-imputes the withheld blocks with the "
                               "train means. This is the deployment case the paper's robustness claim is about.",
                  "refit": "Modalities are withheld in every split and the forest (with the grid point its Table 1 "
                           "row chose) is refitted on the degraded features: it measures the information left, "
                           "not the robustness of a fitted model.",
                  "none": "skipped.",
              }[proto["robustness"]],
              "- reconstruction (Figure 3): each modality hidden on the test molecules that have it and another "
              "one, reconstructed by the decoder from the fused vector of the rest; cosine in the model's "
              "normalised space (predicting the mean scores 0; features with std at the model's floor left out). "
              "Raw-space cosine (inflated by non-negative counts and large-scale descriptors) beside:",
              ""]
    mods = list(dict.fromkeys(m for r in results for m in details["tasks"][r.task]["reconstruction_cosine_raw"]))
    if mods:
        lines += ["| task | " + " | ".join(f"{m} normalised / raw" for m in mods) + " |", "|---|" + "---|" * len(mods)]
        for r in results:
            raw = details["tasks"][r.task]["reconstruction_cosine_raw"]
            cells = [f"{r.reconstruction_cosine[m]:.3f} / {raw[m]:.3f}" if m in raw else "–" for m in mods]
            lines.append(f"| {r.task} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"- attention (Figures 4-5): test molecules; mask rates {proto['mask_rates']} hide present modalities "
              "with `sample_training_mask` (never all of a molecule's), averaged over the seeds.",
              "- featureless rows (SMILES that do not parse, or every encoder failed) are kept with NaN features, "
              "imputed with the train column mean: " + "; ".join(
                  f"{r.task} {'/'.join(str(v) for v in details['tasks'][r.task]['featureless_rows'].values())}"
                  for r in results) + " (train/valid/test).",
              "", "## Timing", "",
              f"Featurisation: {details['featurize']['distinct_smiles']:,} distinct SMILES in "
              f"{details['featurize']['seconds']:.1f} s with {details['featurize']['workers']} process(es). "
              f"Whole run: {details.get('seconds', float('nan')):.0f} s.", "",
              "Under the `inference` protocol Figure 2 is scored by the Table 1 forests, so its time is in "
              "`table1`; `refit` adds a `robustness` column.", "",
              "| task | " + " | ".join(["prepare", "table1", "robustness", "reconstruction_attention"]) + " |",
              "|---|---|---|---|---|"]
    for r in results:
        sec = details["tasks"][r.task]["seconds"]
        lines.append(f"| {r.task} | " + " | ".join(f"{sec[k]:.0f} s" if k in sec else "–" for k in
                                                   ("prepare", "table1", "robustness", "reconstruction_attention")) + " |")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI glue


def _float_list(text: str) -> list[float]:
    import argparse

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def add_arguments(parser) -> None:
    """The ``dmf evaluate`` arguments (also used by ``jobs/evaluate.py``)."""
    parser.add_argument("--model", required=True, help="model directory (config.json + model.safetensors)")
    parser.add_argument(
        "--task", action="append", required=True, metavar="[NAME=]PATH",
        help="a task, repeatable: NAME=FOLDER (train/valid/test.csv inside), NAME=TRAIN,VALID,TEST, or one "
             "file (split with --split, scaffold by default); NAME defaults to the folder or file name",
    )
    parser.add_argument("--out", required=True, help="output folder: report.md, CSVs, PNGs, summary.json")
    parser.add_argument("--label", action="append", default=None,
                        help="label column (repeat or comma-separate for multi-task; default: auto-detect)")
    parser.add_argument("--smiles-column", default=None, help="SMILES column (default: auto-detect)")
    parser.add_argument("--split", choices=_tasks.SPLIT_NAMES, default=None,
                        help="provided (folder/three files), or scaffold | random (computed; pools the files). "
                             "Default: provided, or scaffold for one file")
    parser.add_argument("--seeds", type=int, default=3, help="downstream seeds (default 3)")
    parser.add_argument("--robustness", choices=ROBUSTNESS_PROTOCOLS, default="inference",
                        help="inference (default): fit on complete data, test with modalities withheld; "
                             "refit: withhold in all splits and refit; none: skip")
    parser.add_argument("--mask-rates", type=_float_list, default=list(DEFAULT_MASK_RATES),
                        help="mask rates for attention vs mask rate (default 0,0.2,0.4,0.6,0.8)")
    parser.add_argument("--grid-every-seed", action="store_true",
                        help="choose the forest's grid point on valid for every seed (default: seed 0, reused)")
    parser.add_argument("--n-estimators", type=int, default=None, help="trees per forest (default 300; 100 on large tasks)")
    parser.add_argument("--n-jobs", type=int, default=2, help="cores per forest fit (default 2)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes encoding molecules (default: one per core from 3,000 molecules)")
    parser.add_argument("--device", default="cpu", help="torch device for the fusion model (default cpu)")


def config_from_args(args) -> EvaluateConfig:
    labels = None
    if args.label:
        labels = [c.strip() for item in args.label for c in item.split(",") if c.strip()]
    return EvaluateConfig(
        model=args.model,
        tasks=[TaskSpec.parse(t) for t in args.task],
        out=args.out,
        seeds=args.seeds,
        split=args.split,
        label_columns=labels,
        smiles_column=args.smiles_column,
        robustness=args.robustness,
        mask_rates=args.mask_rates,
        grid_every_seed=args.grid_every_seed,
        n_estimators=args.n_estimators,
        n_jobs=args.n_jobs,
        workers=args.workers,
        device=args.device,
    )


def config_help() -> dict[str, str]:
    """Field -> description, for docs."""
    return {f.name: f.metadata.get("help", "") for f in fields(EvaluateConfig)}
