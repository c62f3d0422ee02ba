"""``dmf evaluate``: downstream benchmarks of a fusion model, robustness, reconstruction, attention.

One run computes, for every task, on the same splits with the chosen downstream learner
(:mod:`dmf_ray.pipelines.evaluate.learners`; ``auto``: per row the learner best on valid):

- Table 1: each single modality (raw encoder output), every concatenation of 2..M modalities,
  and ``fusion`` (the model's fused vector from all modalities); test metric over seeds, the
  learner per row, rows using an encoder trained on the task's labels marked LEAKED. The
  paper's protocol (XGBoost on the frozen features) as its own table.
- Figure 2: fusion and the all-modality concatenation when modalities are withheld
  (:mod:`dmf_ray.pipelines.evaluate.table` for ``inference``, :mod:`.robustness` for ``refit``).
- Figure 3: cosine between a hidden modality and its reconstruction from the others.
- Figures 4-5: mean attention per modality, and how it moves as modalities are masked
  (:mod:`dmf_ray.pipelines.evaluate.analyses`).

Every figure that cannot be computed says why, in the console, report.md and summary.json.

Featurisation (:mod:`dmf_ray.pipelines.evaluate.features`): every distinct SMILES of all tasks
is parsed and encoded once per modality with the model's own encoders (rebuilt from
``config.json``). A row whose SMILES does not parse, or whose encoder fails, is kept: its
features are NaN and imputed with the train column mean; it is counted in ``report.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmf_ray.files import fetch, is_remote, redact, staging_dir, upload_tree
from dmf_ray.progress import ProgressCallback, Reporter
from dmf_ray.pipelines.evaluate import analyses as _analyses
from dmf_ray.pipelines.evaluate import learners as _learners
from dmf_ray.pipelines.evaluate import provenance as _provenance
from dmf_ray.pipelines.evaluate import tasks as _tasks
from dmf_ray.pipelines.evaluate.config import EvaluateConfig
from dmf_ray.pipelines.evaluate.finetune import FINETUNED, FinetuneSettings, run_finetune
from dmf_ray.pipelines.evaluate.features import FeaturizedSmiles, featurize_smiles
from dmf_ray.pipelines.evaluate.outputs import protocol, write_outputs
from dmf_ray.pipelines.evaluate.protocol import removal_patterns
from dmf_ray.pipelines.evaluate.results import TaskResult, mean_std
from dmf_ray.pipelines.evaluate.robustness import run_refit
from dmf_ray.pipelines.evaluate.table import PAPER_LEARNER, TaskRun, run_table1, table_rows
from dmf_ray.pipelines.evaluate.taskdata import task_data

SPLITS = _tasks.SPLITS


@dataclass
class EvaluateResult:
    """What :func:`evaluate` wrote: the output folder, its files, per-task results, the summary
    document, every detail (evaluation.json) and the run's wall time in seconds."""

    out: Path
    files: dict[str, Path]
    results: list[TaskResult]
    summary: dict[str, Any]
    details: dict[str, Any]
    seconds: float


@dataclass
class _Model:
    """The fusion model and what its card says about its inputs."""

    model: Any  # DynamicFusion
    modalities: list[str]
    specs: dict[str, dict]
    trained_on: dict[str, dict | None]
    corpus: dict[str, Any]
    corpus_ids: set[str] | None
    corpus_note: str


def load_tasks(config: EvaluateConfig) -> list[_tasks.Task]:
    """Load every task of ``config`` (raises TaskError / FileNotFoundError naming the problem)."""
    loaded = []
    for spec in config.tasks:
        # Task files on s3:// (or any remote filesystem) are small: read local copies.
        source = (str(fetch(spec.source)) if isinstance(spec.source, str)
                  else [str(fetch(str(p))) for p in spec.source])
        loaded.append(_tasks.load_task(source, smiles_column=spec.smiles_column or config.smiles_column,
                                       label_columns=spec.label_columns or config.label_columns,
                                       split=config.task_split(spec), name=spec.name))
    return loaded


def _load_model(config: EvaluateConfig, log: Callable[[str], None]) -> _Model:
    from dmf_ray.inference import FusionEmbedder

    embedder = FusionEmbedder(config.model, device=config.device)
    model, card = embedder.model, embedder.card
    mods = list(embedder.modalities)
    specs = {m: card["modalities"][m] for m in mods}
    corpus = _provenance.training_corpus(card)
    ids, note = _provenance.corpus_ids(corpus.get("store"))
    trained_on = {m: _provenance.trained_on(specs[m]) for m in mods}
    log(f"evaluate: model {redact(config.model)}: modalities {', '.join(mods)}, latent {model.config.latent_dim}; "
        f"trained on {note}" + "".join(f"; encoder {m} trained on {', '.join(t['datasets'])}"
                                       for m, t in trained_on.items() if t))
    return _Model(model, mods, specs, trained_on, corpus, ids, note)


def evaluate(config: EvaluateConfig, log: Callable[[str], None] = print,
             progress: ProgressCallback | None = None) -> EvaluateResult:
    """Run the whole evaluation and write the report into ``config.out``; see the module docstring.

    ``progress(done, total)`` (``dmf_ray.progress``; called from this thread only), in two
    phases, each counting from 0 to its total: first the distinct SMILES of all tasks encoded
    with every modality (total: their count), then the analysis steps of the tasks (total:
    tasks x steps per task: Table 1, fine-tuning with --finetune, Figure 2 with --robustness
    refit, Figures 3-5). The last call has done == total == the steps.

    Raises ValueError / FileNotFoundError / TaskError (one line each) for a bad model directory,
    task or learner before any long work starts.
    """
    from dmf_ray.artifact import read_model_config

    started = time.perf_counter()
    publish_to = config.out if is_remote(config.out) else None
    if publish_to:  # write the report locally, copy it there after each task
        config = config.model_copy(update={"out": str(staging_dir(config.out))})
    read_model_config(config.model)  # a bad model dir fails before any task is read
    learner_missing = None if config.learner == "auto" else _learners.available(config.learner)
    if learner_missing:
        raise ValueError(f"--learner {config.learner}: {learner_missing}")
    t0 = time.perf_counter()
    loaded = load_tasks(config)
    log(f"evaluate: loaded {len(loaded)} task(s) in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{t.name} ({t.kind}, {t.split_name} split, {sum(t.sizes.values()):,} rows, "
                    f"{t.n_tasks} label(s))" for t in loaded))
    fm = _load_model(config, log)
    report = Reporter(progress, log, "evaluate")
    feats = featurize_smiles([s for t in loaded for split in SPLITS for s in t.smiles[split]], fm.specs,
                             workers=config.workers, log=log, progress=report)
    details = _details(config, fm, feats, log)
    results: list[TaskResult] = []
    steps = _Steps(report, len(loaded) * len(_task_steps(config, fm.modalities)))
    for i, (task, spec) in enumerate(zip(loaded, config.tasks)):
        result, info = _evaluate_task(task, spec.dataset, feats, fm, config, details["protocol"], log, steps)
        results.append(result)
        details["tasks"][task.name] = info
        details["seconds"] = round(time.perf_counter() - started, 1)
        if i + 1 < len(loaded):  # a long benchmark keeps what it has if a later task fails
            write_outputs(config, results, details, partial=True)
            if publish_to:
                upload_tree(config.out, publish_to)
    files, doc = write_outputs(config, results, details)
    if publish_to:
        upload_tree(config.out, publish_to)
    log(f"evaluate: wrote {redact(publish_to or config.out)}/ ({len(files)} files) in {details['seconds']:.0f} s")
    return EvaluateResult(Path(config.out), files, results, doc, details, details["seconds"])


def _details(config: EvaluateConfig, fm: _Model, feats: FeaturizedSmiles, log: Callable[[str], None]) -> dict:
    """The evaluation.json skeleton (model, protocol, featurisation), logging the featurisation."""
    n_bad = sum(1 for i in feats.batch.mol_ids if i is None)
    log(f"evaluate: featurized {len(feats.batch.mol_ids):,} distinct SMILES ({n_bad:,} invalid) with "
        f"{feats.workers} process(es) in {feats.seconds:.1f} s ({len(feats.batch.mol_ids) / max(feats.seconds, 1e-9):,.0f}/s); "
        "encoder failures: " + ", ".join(f"{m} {k}" for m, k in feats.encoder_errors.items()))
    paper_missing = _learners.available(PAPER_LEARNER) if config.paper_protocol else None
    if paper_missing:
        log(f"evaluate: paper protocol table not computed: {paper_missing}")
    return {
        "model": {"dir": redact(str(config.model)), "modalities": fm.modalities,
                  "latent_dim": fm.model.config.latent_dim, "encoders": fm.specs, "training": fm.corpus,
                  "training_corpus": fm.corpus_note,
                  "encoders_trained_on": {m: (None if t is None else {"datasets": t["datasets"],
                                                                      "n_mol_ids": None if t["mol_ids"] is None
                                                                      else len(t["mol_ids"])})
                                          for m, t in fm.trained_on.items()}},
        "protocol": protocol(config, paper_missing),
        "featurize": {"distinct_smiles": len(feats.batch.mol_ids), "invalid_smiles": n_bad,
                      "encoder_failures": feats.encoder_errors, "workers": feats.workers,
                      "seconds": round(feats.seconds, 2)},
        "tasks": {},
        "config": config.recorded(),  # credentials redacted
    }


def _task_steps(config: EvaluateConfig, modalities: list[str]) -> list[str]:
    """The analysis steps of one task, as ``_evaluate_task`` runs them (the progress unit)."""
    refit = len(modalities) >= 2 and config.robustness == "refit" and bool(removal_patterns(modalities))
    return ["table1", *(["finetune"] if config.finetune else []), *(["robustness"] if refit else []),
            "reconstruction_attention"]


class _Steps:
    """Reports the tasks' analysis steps done, of ``total``."""

    def __init__(self, report: Reporter, total: int):
        self.report, self.done, self.total = report, 0, total
        report(0, total)

    def step(self) -> None:
        self.done += 1
        self.report(self.done, self.total)


def _evaluate_task(task: _tasks.Task, dataset: str | None, feats: FeaturizedSmiles, fm: _Model,
                   config: EvaluateConfig, proto: dict, log: Callable[[str], None],
                   steps: _Steps) -> tuple[TaskResult, dict]:
    """Table 1, Figure 2, Figures 3-5 of one task; returns its result and its evaluation.json entry."""
    name, mods = task.name, fm.modalities
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    result = TaskResult.for_task(task)
    data = task_data(task, feats)
    featureless, absent = data.counts()
    dataset = _provenance.task_dataset(name, dataset)
    leaked = _provenance.leaked_modalities(dataset, fm.trained_on)
    rows = table_rows(mods) + ([(FINETUNED, ())] if config.finetune else [])
    result.leaked = _provenance.leaked_rows(rows, mods, leaked)
    patterns = removal_patterns(mods) if len(mods) >= 2 and config.robustness != "none" else []
    _explain_skipped(result, mods, config)
    run = TaskRun(data, fm.model, config, list(range(config.seeds)), result, patterns, log,
                  paper_reason=proto.get("paper_protocol_missing"))
    timings["prepare"] = time.perf_counter() - t0
    log(f"[{name}] {task.kind}, {task.split_name} split, train/valid/test {'/'.join(str(task.sizes[s]) for s in SPLITS)}; "
        f"invalid SMILES {'/'.join(str(v) for v in task.n_invalid_smiles.values())}; featureless rows "
        f"{'/'.join(str(v) for v in featureless.values())} (kept, imputed); "
        f"test scaffolds in train {result.scaffold_overlap}"
        + "".join(f"; LEAKED: {why}" for why in leaked.values()))
    t0 = time.perf_counter()
    run_table1(run)
    timings["table1"] = time.perf_counter() - t0
    steps.step()
    if config.finetune:
        t0 = time.perf_counter()
        run_finetune(run, FinetuneSettings(epochs=config.finetune_epochs))
        timings["finetune"] = time.perf_counter() - t0
        steps.step()
    if patterns and config.robustness == "refit":
        t0 = time.perf_counter()
        run_refit(run)
        timings["robustness"] = time.perf_counter() - t0
        steps.step()
    if patterns:
        log(f"[{name}] robustness ({config.robustness}): " + ", ".join(
            f"{p} {mean_std(v['fusion'])[0]:.3f}/{mean_std(v['concat'])[0]:.3f}"
            for p, v in result.robustness.items()) + " (fusion/concat)")
    t0 = time.perf_counter()
    raw_cos, counts = _figures_3_to_5(run)
    timings["reconstruction_attention"] = time.perf_counter() - t0
    steps.step()
    for what, why in result.not_computed.items():
        log(f"[{name}] not computed: {what}: {why}")
    info = {
        "kind": task.kind, "split": task.split_name, "dataset": dataset, "labels": task.label_names,
        "label_source": task.label_source, "sources": task.sources, "sizes": task.sizes,
        "invalid_smiles": task.n_invalid_smiles, "featureless_rows": featureless, "absent_entries": absent,
        "training_overlap": _provenance.corpus_overlap(data, fm.corpus_ids),
        "encoder_overlap": _provenance.encoder_overlap(data, fm.trained_on),
        "leaked_modalities": leaked, "reconstruction_cosine_raw": raw_cos, "reconstruction_molecules": counts,
        "chosen": run.chosen, "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    log(f"[{name}] done in {sum(timings.values()):.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    return result, info


def _explain_skipped(result: TaskResult, mods: list[str], config: EvaluateConfig) -> None:
    """Record why whole figures are skipped by the settings or the model."""
    if config.robustness == "none":
        result.not_computed["Figure 2"] = "skipped: --robustness none"
    elif len(mods) < 2:
        result.not_computed["Figure 2"] = "needs a model with at least 2 modalities"
    if len(mods) < 2:
        result.not_computed["Figure 3"] = "needs a model with at least 2 modalities (one is hidden, another kept)"


def _figures_3_to_5(run: TaskRun) -> tuple[dict[str, float], dict[str, int]]:
    """Reconstruction cosine and attention into ``run.result``; returns (raw cosines, molecules used)."""
    result, data, mods = run.result, run.data, run.data.modalities
    norm_cos, raw_cos, counts = _analyses.reconstruction(run.model, data) if len(mods) >= 2 else ({}, {}, {})
    for m, n in counts.items():
        if n == 0:
            result.not_computed[f"Figure 3: {m}"] = f"no test molecule has {m} and another modality"
    result.reconstruction_cosine = norm_cos
    result.attention, result.attention_vs_mask_rate = _analyses.attention(run.model, data, run.config.mask_rates,
                                                                          run.seeds)
    if not result.attention:
        result.not_computed["Figures 4-5"] = "no test molecule has any modality"
    run.log(f"[{result.task}] reconstruction cosine (normalised/raw): "
            + ", ".join(f"{m} {norm_cos[m]:.3f}/{raw_cos[m]:.3f}" for m in norm_cos)
            + "; attention: " + ", ".join(f"{m} {v:.2f}" for m, v in result.attention.items()))
    return raw_cos, counts
