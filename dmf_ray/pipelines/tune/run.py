"""Running the search: the checks before Ray, one Tune trial per train() call, ASHA, and the
best trial's model copied to ``out``."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from dmf_ray.files import absolute, atomic_write
from dmf_ray.pipelines.tune.config import (METRICS, TUNE_DIR, TUNE_FILE, SearchDim, TrainingEntry,
                                           TrialRecord, TuneConfig, TuneResult, set_path)
from dmf_ray.pipelines.tune.objective import TaskEntry, load_objective_tasks, prepare_objective


@dataclass
class TunePlan:
    """What check_tune found: the settings every trial starts from (nested, TrainConfig's
    shape, without ``out``), the searched dimensions and the objective's direction."""

    base: dict[str, Any]
    dims: list[SearchDim]
    mode: str
    out: Path
    tasks: list[Any] = field(default_factory=list)  # the objective tasks, loaded (objective.TaskEntry.load_task)
    specs: dict[str, dict] = field(default_factory=dict)  # encoder spec of every modality a trial may train on


def _candidates(dim: SearchDim) -> list[Any]:
    """The values a dimension can produce at its ends (every value of a choice or grid)."""
    if dim.kind in ("choice", "grid"):
        return list(dim.args)
    low, high = dim.args
    return [low, high - 1 if dim.kind == "randint" else high]


def _problems_of(training: TrainingEntry, settings: dict[str, Any]) -> list[str]:
    try:
        training.config_class(**settings)
    except ValueError as exc:
        return list(getattr(exc, "problems", None) or [str(exc)])
    return []


def _settings_problems(config: TuneConfig, training: TrainingEntry, base: dict[str, Any],
                       dims: list[SearchDim], probe_out: str) -> list[str]:
    """Every problem of the fixed settings, then of each searched value, as one list."""
    problems = [f"settings: {p}" for p in _problems_of(training, {**base, "out": probe_out})]
    if problems:
        return problems
    for dim in dims:
        for value in _candidates(dim):
            trial = copy.deepcopy(base)
            set_path(trial, dim.path, value)
            problems += [f"search {dim.path}={value!r}: {p}" for p in _problems_of(training, {**trial, "out": probe_out})]
    return problems


def _objective_specs(check: Any, dims: list[SearchDim]) -> dict[str, dict]:
    """Encoder specs (from the store) of the modalities any trial may train on: the checked
    config's, plus every store modality a searched ``modalities`` may pick."""
    stored = check.store.modalities
    names = list(check.names)
    for dim in dims:
        if dim.path == "modalities":
            for value in _candidates(dim):
                picked = value if isinstance(value, (list, tuple)) else str(value).split(",")
                names += [n for n in picked if n in stored and n not in names]
    return {n: dict(stored[n]) for n in names}


def _entries_problems(config: TuneConfig, training: TrainingEntry, tasks: TaskEntry | None) -> list[str]:
    if not config.tasks:
        return []
    missing = [what for what, given in (("a TaskEntry (tasks=)", tasks), ("TrainingEntry.check", training.check),
                                        ("TrainingEntry.load_checkpoint", training.load_checkpoint)) if given is None]
    return [f"tasks: the downstream objective needs {', '.join(missing)} from the caller"] if missing else []


def check_tune(config: TuneConfig, training: TrainingEntry, log: Callable[[str], None] = print,
               tasks: TaskEntry | None = None) -> TunePlan:
    """Everything that needs no cluster: the fixed and searched settings are valid TrainConfigs
    at every end of the search, the objective tasks load and can be scored (``tasks``: the
    evaluate workflow's pieces, needed when ``config.tasks`` names any), the store has the
    modalities (at least two: with one, nothing is masked and the objective is undefined), and
    ``out`` holds nothing else unless ``fresh``. Reads files, changes nothing. Raises ValueError
    naming every problem."""
    out = Path(config.out).expanduser().absolute()
    base = config.fixed()
    # Absolute: a trial runs in its own trial directory, where a relative path means nothing.
    base.update(store=absolute(config.store), epochs=config.epochs)
    dims = config.dims()
    probe_out = str(out / TUNE_DIR / "check")
    problems = _settings_problems(config, training, base, dims, probe_out) + _entries_problems(config, training, tasks)
    loaded: list[Any] = []
    if config.tasks and tasks is not None:
        loaded, task_problems = load_objective_tasks(config.tasks, tasks)
        problems += task_problems
    if problems:
        raise ValueError("invalid tune search:\n  - " + "\n  - ".join(problems))
    specs: dict[str, dict] = {}
    if training.check is not None:
        check = training.check(training.config_class(**base, out=probe_out, fresh=True), log)
        names = getattr(check, "names", None)
        if names is not None and len(names) < 2:
            raise ValueError(f"tune needs at least two modalities (the objective is leave-one-out), got {names}")
        specs = _objective_specs(check, dims) if loaded else {}
    if out.exists() and any(out.iterdir()) and not config.fresh:
        raise ValueError(f"out {out} is not empty (pass --overwrite (fresh=True from Python) to discard it and search again)")
    return TunePlan(base, dims, METRICS[config.metric], out, loaded, specs)


def _distribution(dim: SearchDim):
    from ray import tune

    if dim.kind == "grid":
        return tune.grid_search(list(dim.args))
    if dim.kind == "choice":
        return tune.choice(list(dim.args))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[dim.kind](*dim.args)


def run_trial(params: dict[str, Any], *, base: dict[str, Any], training: TrainingEntry, trials_dir: str,
              objective: list | None = None) -> None:
    """One Tune trial (runs in a Tune trial actor): one train() call with the trial's settings,
    each epoch's metrics forwarded to Tune by Ray Train's TuneReportCallback, with the downstream
    scores of the epoch's checkpoint added when the search has objective tasks (``objective``:
    ``[ObjectRef of objective.ObjectiveData]``)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    settings = copy.deepcopy(base)
    for path, value in params.items():
        set_path(settings, path, value)
    config = training.config_class(**settings, out=str(Path(trials_dir) / trial_id), fresh=True)

    def log(line: str) -> None:
        print(f"[dmf tune {trial_id}] {line}", flush=True)

    callback = TuneReportCallback()
    if objective is not None:
        from dmf_ray.pipelines.tune.report import DownstreamReport

        # The trial's model config as train() builds it (value kinds included), to load each
        # epoch's checkpoint into.
        fusion = training.check(config, lambda line: None).fusion_config()
        callback = DownstreamReport(objective, fusion, training.load_checkpoint, log)
    training.train(config, log=log, callbacks=[callback])


TRIAL_CPUS = 0.01


def _placement_groups() -> dict[str, dict]:
    from ray.util import placement_group_table

    return {pg_id: info for pg_id, info in placement_group_table().items() if info.get("state") == "CREATED"}


def _make_cleanup(before: set[str]):
    """A Tune callback that frees the placement groups of Ray Train runs whose trial ASHA stopped.

    Tune stops a trial by ending its actor, mid-``fit()``: the Train controller dies with it, and
    its workers' placement group stays reserved until Ray Train's PlacementGroupCleaner removes it,
    which needs the dashboard's State API (a cluster without a dashboard keeps the CPUs for good,
    and the next trial's data loading then waits for them forever). When a trial ends and no
    other trial runs, every placement group created since the search began, other than Tune's
    own per-trial ones, belongs to a finished or dead Train run: removed."""
    from ray.tune import Callback

    class _FreeStoppedTrials(Callback):
        def _free(self, trials) -> None:
            from ray.util import remove_placement_group
            from ray.util.placement_group import PlacementGroup, PlacementGroupID

            if any(t.status == "RUNNING" for t in trials):
                return
            for pg_id, info in _placement_groups().items():
                bundles = list(info.get("bundles", {}).values())
                if pg_id in before or bundles == [{"CPU": TRIAL_CPUS}]:
                    continue
                remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(pg_id)))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._free([t for t in trials if t is not trial])

        def on_trial_error(self, iteration, trials, trial, **info):
            self._free([t for t in trials if t is not trial])

    return _FreeStoppedTrials()


def _make_progress(log: Callable[[str], None], metric: str, epochs: int):
    """A Tune callback, run in the driver, that logs each trial's every epoch (its objective) and
    its end: the search's progress. The trials' own lines are printed in their Ray workers, which
    the console shows only with --verbose."""
    from ray.tune import Callback

    class _Progress(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = _number(result.get(metric))
            log(f"  trial {trial.trial_id} {trial.config}: epoch {result.get('training_iteration')}/{epochs}, "
                f"{metric} {'undefined' if value is None else f'{value:.4f}'}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            # Whether ASHA stopped it is said once, in the summary (_record's rule).
            epochs_run = (trial.last_result or {}).get("training_iteration", 0)
            log(f"  trial {trial.trial_id} ended after {epochs_run} epoch(s)")

        def on_trial_error(self, iteration, trials, trial, **info):
            log(f"  trial {trial.trial_id} failed: {trial.error_file or 'see the Ray session logs'}")

    return _Progress()


@contextmanager
def _tune_console_quiet() -> Iterator[None]:
    """Ray Tune's default console reporter (ray/tune/experimental/output.py, Ray 2.60) prints its
    "Configuration for experiment" box and a TensorBoard hint even at verbose=0; the legacy
    reporter honours verbose=0. tune.run reads RAY_AIR_NEW_OUTPUT in the driver when fit()
    starts, so it is set for the call only: our own progress lines (_make_progress) replace both."""
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def _tuner(config: TuneConfig, plan: TunePlan, training: TrainingEntry, objective: list | None,
           log: Callable[[str], None]):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trainable = tune.with_parameters(run_trial, base=plan.base, training=training,
                                     trials_dir=str(plan.out / TUNE_DIR / "trials"), objective=objective)
    # The trial function only waits on its Ray Train run, whose workers hold the CPUs: it takes a
    # token share (with 1 CPU each, a 2-CPU machine could never start a trial's worker; Tune
    # refuses a request of 0).
    trainable = tune.with_resources(trainable, {"CPU": TRIAL_CPUS})
    return tune.Tuner(
        trainable,
        param_space={dim.path: _distribution(dim) for dim in plan.dims},
        tune_config=tune.TuneConfig(
            metric=config.metric, mode=plan.mode, num_samples=config.num_samples,
            # max_t one past the last epoch: at max_t ASHA stops the trial, which would end it at its
            # last report, before train() writes its model directory.
            scheduler=ASHAScheduler(max_t=config.epochs + 1, grace_period=min(config.grace_period, config.epochs),
                                    reduction_factor=config.reduction_factor),
            # Tune ignores TuneConfig.max_concurrent_trials once a search_alg is given (tune.py,
            # Ray 2.60): the limit goes to the generator itself. A trial over the limit would wait
            # for CPUs and Ray Train would fail it after 60 s (WorkerGroupStartupTimeoutError).
            search_alg=BasicVariantGenerator(max_concurrent=config.max_concurrent_trials, random_state=config.seed),
            trial_name_creator=lambda trial: trial.trial_id, trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(name="search", storage_path=str(plan.out / TUNE_DIR / "ray"), verbose=0,
                                  callbacks=[_make_cleanup(set(_placement_groups())),
                                             _make_progress(log, config.metric, config.epochs)]),
    )


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _record(result, config: TuneConfig, plan: TunePlan) -> TrialRecord:
    """One trial's row from Tune's Result (its reports in metrics_dataframe)."""
    frame = result.metrics_dataframe
    history = [_number(v) for v in frame[config.metric]] if frame is not None and config.metric in frame else []
    trial_id = Path(result.path).name
    params = {k: v for k, v in (result.config or {}).items()}
    error = f"{type(result.error).__name__}: {result.error}" if result.error else None
    model_dir = plan.out / TUNE_DIR / "trials" / trial_id
    complete = len(history) >= config.epochs and error is None and (model_dir / "config.json").exists()
    last = result.metrics or {}
    final = {k: _number(v) for k, v in last.items() if k in METRICS or k.startswith("downstream/")}
    # Stopped by ASHA: fewer epochs, or cut at a rung on its last epoch (before train() wrote its model).
    return TrialRecord(trial_id=trial_id, params=params, epochs_run=len(history),
                       stopped_early=error is None and not complete,
                       metric=history[-1] if history else None, history=history,
                       seconds=_number(last.get("time_total_s")), error=error,
                       model_dir=str(model_dir) if complete else None, final=final)


def _best(records: list[TrialRecord], mode: str) -> TrialRecord:
    finished = [r for r in records if r.model_dir is not None and r.metric is not None]
    if not finished:
        errors = "; ".join(f"{r.trial_id}: {r.error}" for r in records if r.error) or "none ran every epoch"
        raise RuntimeError(f"no trial finished with a defined objective ({errors})")
    sign = 1.0 if mode == "min" else -1.0
    return min(finished, key=lambda r: sign * r.metric)


def _publish(best: TrialRecord, out: Path) -> None:
    """Copy the best trial's model directory into out (beside _tune/), files only."""
    for item in Path(best.model_dir).iterdir():
        if item.is_file():
            shutil.copy2(item, out / item.name)


def _summary(config: TuneConfig, plan: TunePlan, result: TuneResult) -> dict[str, Any]:
    return {"metric": config.metric, "mode": plan.mode, "epochs": config.epochs, "search": config.search,
            "settings": config.settings, "num_samples": config.num_samples, "grace_period": config.grace_period,
            "reduction_factor": config.reduction_factor, "tasks": config.tasks, "objective": result.objective,
            "best": result.best.trial_id, "seconds": result.seconds, "trials": [asdict(r) for r in result.trials]}


def tune(config: TuneConfig, training: TrainingEntry, log: Callable[[str], None] = print,
         tasks: TaskEntry | None = None) -> TuneResult:
    """Search, then write the best trial's model to ``config.out``; see the package doc.

    ``tasks``: the evaluate workflow's pieces (objective.TaskEntry), needed when ``config.tasks``
    names objective tasks; their train and valid molecules are encoded once, here, before the
    first trial. Starts a local Ray if none is connected (after check_tune). Raises ValueError for
    bad settings or tasks, a bad store or a non-empty out, and RuntimeError when no trial finished."""
    import ray

    from dmf_ray.runtime import ensure_ray

    started = time.time()
    plan = check_tune(config, training, log, tasks)
    if config.fresh and plan.out.exists():
        shutil.rmtree(plan.out)
    plan.out.mkdir(parents=True, exist_ok=True)
    data = prepare_objective(plan.tasks, plan.specs, tasks, log) if plan.tasks else None
    ensure_ray(dashboard=True)  # Ray Train's placement-group cleaner asks the dashboard (see runtime)
    log(f"tune: {config.num_samples} sample(s) of {', '.join(d.path for d in plan.dims)}; objective {config.metric} "
        f"({plan.mode}); ASHA grace {config.grace_period}, reduction {config.reduction_factor:g}, max {config.epochs} "
        f"epochs; {config.max_concurrent_trials} trial(s) at once")
    # In the object store once for every trial; the list keeps the reference a reference (see report).
    objective = [ray.put(data)] if data is not None else None
    with _tune_console_quiet():
        grid = _tuner(config, plan, training, objective, log).fit()
    records = [_record(r, config, plan) for r in grid]
    best = _best(records, plan.mode)
    _publish(best, plan.out)
    result = TuneResult(str(plan.out), best, records, config.metric, plan.mode, time.time() - started,
                        str(plan.out / TUNE_FILE), data.describe() if data is not None else None)
    text = json.dumps(_summary(config, plan, result), indent=2)
    atomic_write(pafs.LocalFileSystem(), str(plan.out / TUNE_FILE), lambda p: Path(p).write_text(text, encoding="utf-8"))
    for r in records:
        state = "error" if r.error else "stopped by ASHA" if r.stopped_early else "finished"
        log(f"  trial {r.trial_id} {r.params}: {state} after {r.epochs_run} epoch(s), {config.metric} "
            f"{r.metric if r.metric is None else f'{r.metric:.4f}'}")
    log(f"best trial {best.trial_id} {best.params}: {config.metric} {best.metric:.4f}; model written to {plan.out}")
    if data is not None:
        log(f"note: the valid splits of {', '.join(t.name for t in data.tasks)} chose this model, so its valid figures "
            "on them are optimistic; their test splits were never read")
    return result
