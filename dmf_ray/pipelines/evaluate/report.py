"""Evaluation protocol helpers and the report writer (Table 1, Figures 2-5, CSVs, JSON).

The caller fills one :class:`TaskResult` per task (scores per seed, robustness under
modality removal, reconstruction cosine, attention) and calls :func:`write_report`.

Row names: a modality name (``ecfp``), a concatenation of modalities joined by ``+`` in
the order given by :func:`concat_rows` (``ecfp+maccs``), or ``fusion``.

Removal pattern names (:func:`removal_patterns`): ``-ecfp`` (that modality withheld from
every molecule), ``-ecfp+maccs`` (both withheld) and ``random25`` (25% of the present
modality entries withheld at random, never all of one molecule's).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FUSION = "fusion"
METRIC_LABELS = {"roc_auc": "ROC-AUC ↑", "rmse": "RMSE ↓"}
HIGHER_IS_BETTER = {"roc_auc": True, "rmse": False}
RANDOM25 = "random25"


# --------------------------------------------------------------------------- protocol


def concat_rows(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every combination of 2..M modalities (input order kept), e.g. for a, b, c:
    ``[(a, b), (a, c), (b, c), (a, b, c)]``. Name a row with ``"+".join(combo)``."""
    mods = _check_modalities(modalities, minimum=1)
    return [c for k in range(2, len(mods) + 1) for c in itertools.combinations(mods, k)]


@dataclass(frozen=True)
class RemovalPattern:
    """Which modalities a robustness run withholds at inference.

    ``removed`` are withheld from every molecule; ``random_fraction`` > 0 instead withholds
    that fraction of the present (molecule, modality) entries at random, never all of a
    molecule's.
    """

    name: str
    removed: tuple[str, ...] = ()
    random_fraction: float = 0.0


def removal_patterns(modalities: Sequence[str]) -> list[RemovalPattern]:
    """Each single modality, each pair when M > 2 (so at least one stays), and ``random25``.

    M modalities give M + M(M-1)/2 + 1 patterns for M > 2, and 3 for M = 2.
    """
    mods = _check_modalities(modalities, minimum=2)
    patterns = [RemovalPattern(f"-{m}", (m,)) for m in mods]
    if len(mods) > 2:
        patterns += [RemovalPattern("-" + "+".join(p), p) for p in itertools.combinations(mods, 2)]
    patterns.append(RemovalPattern(RANDOM25, (), 0.25))
    return patterns


def removal_mask(
    pattern: RemovalPattern,
    modalities: Sequence[str],
    n: int,
    seed: int = 0,
    present: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean ``[n, M]`` mask of the modality entries kept under ``pattern``.

    ``present`` (default: all True) marks entries that exist before removal (e.g. False
    where an encoder failed); removal only ever turns True into False. For a random pattern,
    ``round(fraction * present entries)`` entries are withheld, drawn uniformly among present
    entries other than one protected present entry per molecule, so no molecule that had a
    modality loses all of them. Fixed patterns may leave a molecule with nothing if it only
    had the withheld modalities; the caller decides how to count those.
    """
    mods = _check_modalities(modalities, minimum=2)
    keep = np.ones((n, len(mods)), dtype=bool) if present is None else np.array(present, dtype=bool, copy=True)
    if keep.shape != (n, len(mods)):
        raise ValueError(f"present must have shape {(n, len(mods))}, got {keep.shape}")
    unknown = [m for m in pattern.removed if m not in mods]
    if unknown:
        raise ValueError(f"pattern {pattern.name!r} removes unknown modalities {unknown}; known: {mods}")
    for m in pattern.removed:
        keep[:, mods.index(m)] = False
    if pattern.random_fraction > 0:
        rng = np.random.default_rng(seed)
        candidates = keep.copy()
        for i in np.flatnonzero(keep.any(axis=1)):
            candidates[i, rng.choice(np.flatnonzero(keep[i]))] = False
        flat = np.flatnonzero(candidates.ravel())
        k = min(int(round(pattern.random_fraction * keep.sum())), flat.size)
        drop = rng.choice(flat, size=k, replace=False)
        keep.ravel()[drop] = False
    return keep


def _check_modalities(modalities: Sequence[str], minimum: int) -> list[str]:
    mods = list(modalities)
    if len(mods) < minimum:
        raise ValueError(f"need at least {minimum} modalities, got {mods}")
    if len(set(mods)) != len(mods):
        raise ValueError(f"duplicate modality names in {mods}")
    bad = [m for m in mods if not m or "+" in m or m == FUSION]
    if bad:
        raise ValueError(f"modality names must be non-empty, without '+', and not {FUSION!r}: {bad}")
    return mods


# --------------------------------------------------------------------------- results


def _floats(values) -> list[float]:
    if isinstance(values, (int, float, np.floating, np.integer)):
        return [float(values)]
    return [float(v) for v in values]


@dataclass
class TaskResult:
    """Everything the report needs for one task; fill it as results come in.

    - ``metric``: ``"roc_auc"`` or ``"rmse"`` (the primary test metric in ``rows``).
    - ``rows``: row name -> test metric, one value per seed.
    - ``robustness``: removal pattern name -> ``{"fusion": [...], "concat": [...]}`` test
      metric per seed, where ``concat`` is the concatenation of all modalities with the
      withheld blocks mean-imputed, ``fusion`` the fused vector from the remaining ones.
    - ``reconstruction_cosine``: modality -> mean cosine(decoder output, true embedding).
    - ``attention``: modality -> mean attention weight with all modalities present.
    - ``attention_vs_mask_rate``: mask rate -> modality -> mean attention weight.
    - ``extra_metrics``: other test metrics per row and seed, e.g. ``{"mae": {row: [...]}}``.
    - ``invalid_smiles``, ``n_molecules``: per split; ``scaffold_overlap``: test molecules
      whose scaffold occurs in train.
    - ``params``: row -> chosen downstream params per seed (for the CSV trail).
    """

    task: str
    metric: str
    split: str
    rows: dict[str, list[float]] = field(default_factory=dict)
    robustness: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    reconstruction_cosine: dict[str, float] = field(default_factory=dict)
    attention: dict[str, float] = field(default_factory=dict)
    attention_vs_mask_rate: dict[float, dict[str, float]] = field(default_factory=dict)
    extra_metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    invalid_smiles: dict[str, int] = field(default_factory=dict)
    n_molecules: dict[str, int] = field(default_factory=dict)
    scaffold_overlap: int | None = None
    params: dict[str, list[dict]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in HIGHER_IS_BETTER:
            raise ValueError(f"metric must be one of {list(HIGHER_IS_BETTER)}, got {self.metric!r}")

    @classmethod
    def for_task(cls, task, scaffold_overlap: bool = True) -> TaskResult:
        """Start a result from a loaded :class:`dmf_ray.pipelines.evaluate.tasks.Task`."""
        return cls(
            task=task.name,
            metric="roc_auc" if task.kind == "classification" else "rmse",
            split=task.split_name,
            invalid_smiles=task.n_invalid_smiles,
            n_molecules=task.sizes,
            scaffold_overlap=task.scaffold_overlap() if scaffold_overlap else None,
        )

    def add_fit(self, row: str, fit: Mapping) -> None:
        """Record one seed of :func:`dmf_ray.pipelines.evaluate.downstream.fit_and_score` for ``row``."""
        self.rows.setdefault(row, []).append(float(fit["test_metric"]))
        for name, value in fit["test"].items():
            if name != self.metric and not name.endswith("_per_task") and not name.startswith("n_tasks"):
                self.extra_metrics.setdefault(name, {}).setdefault(row, []).append(float(value))
        self.params.setdefault(row, []).append(dict(fit.get("params", {})))

    def add_robustness(self, pattern: str, method: str, value: float) -> None:
        """Record one seed's test metric for ``method`` (``"fusion"``/``"concat"``) under ``pattern``."""
        if method not in ("fusion", "concat"):
            raise ValueError(f"method must be 'fusion' or 'concat', got {method!r}")
        self.robustness.setdefault(pattern, {}).setdefault(method, []).append(float(value))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0.0 for one value) over the finite values; NaN if none."""
    v = np.array([x for x in _floats(values) if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def order_rows(names: Iterable[str]) -> list[str]:
    """Single modalities, then concatenations (fewest parts first), then fusion, then others."""
    names = list(dict.fromkeys(names))

    def key(item: tuple[int, str]):
        i, n = item
        if n == FUSION:
            return (2, 0, i)
        if "+" in n:
            return (1, n.count("+"), i)
        return (0, 0, i)

    return [n for _, n in sorted(enumerate(names), key=key)]


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def summary(results: Sequence[TaskResult]) -> dict:
    """The ``summary.json`` document (NaN written as ``null``)."""
    tasks = {}
    for r in results:
        rows = {}
        for row in order_rows(r.rows):
            m, s = mean_std(r.rows[row])
            rows[row] = {"mean": _json_float(m), "std": _json_float(s)}
        robustness = {
            p: {meth: _json_float(mean_std(r.robustness[p].get(meth, []))[0]) for meth in ("fusion", "concat")}
            for p in r.robustness
        }
        tasks[r.task] = {
            "metric": r.metric,
            "split": r.split,
            "rows": rows,
            "robustness": robustness,
            "reconstruction_cosine": {m: _json_float(float(v)) for m, v in r.reconstruction_cosine.items()},
            "attention": {m: _json_float(float(v)) for m, v in r.attention.items()},
        }
    return {"tasks": tasks}


# --------------------------------------------------------------------------- writer

FILES = {
    "report": "report.md",
    "summary": "summary.json",
    "table1": "table1.csv",
    "scores": "scores.csv",
    "robustness": "robustness.csv",
    "reconstruction": "reconstruction_cosine.csv",
    "attention": "attention.csv",
    "attention_vs_mask_rate": "attention_vs_mask_rate.csv",
    "datasets": "datasets.csv",
    "params": "params.csv",
    "figure2": "figure2_robustness.png",
    "figure3": "figure3_reconstruction.png",
    "figure4": "figure4_attention_vs_mask_rate.png",
    "figure5": "figure5_attention.png",
}


def write_report(results: Sequence[TaskResult], out_dir, title: str = "dmf evaluate") -> dict[str, Path]:
    """Write every file of :data:`FILES` into ``out_dir`` (created); returns name -> path.

    Figures are written even without data (they then say so), so the set of files is
    always the same.
    """
    results = list(results)
    names = [r.task for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate task names in results: {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    _write_csvs(results, paths)
    with open(paths["summary"], "w") as fh:
        json.dump(summary(results), fh, indent=2, allow_nan=False)
        fh.write("\n")
    _figure2(results, paths["figure2"])
    _bars_per_modality(results, "reconstruction_cosine", "reconstruction cosine", paths["figure3"],
                       "Figure 3: reconstruction cosine per modality")
    _figure4(results, paths["figure4"])
    _bars_per_modality(results, "attention", "mean attention weight", paths["figure5"],
                       "Figure 5: mean attention per modality")
    paths["report"].write_text(_markdown(results, title))
    return paths


def _csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _write_csvs(results: Sequence[TaskResult], paths: dict[str, Path]) -> None:
    table1, scores, robust, recon, att, att_rate, datasets, params = ([] for _ in range(8))
    for r in results:
        for row in order_rows(r.rows):
            m, s = mean_std(r.rows[row])
            table1.append([r.task, r.metric, r.split, row, m, s, len(r.rows[row])])
            scores += [[r.task, r.split, row, r.metric, seed, v] for seed, v in enumerate(r.rows[row])]
            for metric, per_row in r.extra_metrics.items():
                scores += [[r.task, r.split, row, metric, seed, v] for seed, v in enumerate(per_row.get(row, []))]
            params += [[r.task, row, seed, json.dumps(p, sort_keys=True)] for seed, p in enumerate(r.params.get(row, []))]
        for pattern, by_method in r.robustness.items():
            for method, values in by_method.items():
                robust += [[r.task, r.metric, pattern, method, seed, v] for seed, v in enumerate(_floats(values))]
        recon += [[r.task, m, v] for m, v in r.reconstruction_cosine.items()]
        att += [[r.task, m, v] for m, v in r.attention.items()]
        for rate in sorted(r.attention_vs_mask_rate):
            att_rate += [[r.task, rate, m, v] for m, v in r.attention_vs_mask_rate[rate].items()]
        for split in ("train", "valid", "test"):
            datasets.append([r.task, r.split, split, r.n_molecules.get(split, ""), r.invalid_smiles.get(split, ""),
                             r.scaffold_overlap if split == "test" and r.scaffold_overlap is not None else ""])
    _csv(paths["table1"], ["task", "metric", "split", "row", "mean", "std", "n_seeds"], table1)
    _csv(paths["scores"], ["task", "split", "row", "metric", "seed_index", "value"], scores)
    _csv(paths["robustness"], ["task", "metric", "pattern", "method", "seed_index", "value"], robust)
    _csv(paths["reconstruction"], ["task", "modality", "cosine"], recon)
    _csv(paths["attention"], ["task", "modality", "attention"], att)
    _csv(paths["attention_vs_mask_rate"], ["task", "mask_rate", "modality", "attention"], att_rate)
    _csv(paths["datasets"], ["task", "split_method", "split", "n_molecules", "n_invalid_smiles",
                             "test_scaffolds_in_train"], datasets)
    _csv(paths["params"], ["task", "row", "seed", "params"], params)


def _fmt(m: float, s: float, digits: int = 3) -> str:
    if not math.isfinite(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _best(values: dict[str, float], metric: str) -> str | None:
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    if not finite:
        return None
    pick = max if HIGHER_IS_BETTER[metric] else min
    return pick(finite, key=finite.get)


def _markdown(results: Sequence[TaskResult], title: str) -> str:
    lines = [f"# {title}", ""]
    lines += ["Test metric, mean ± sample std over seeds (one downstream random forest per row, "
              "its grid point chosen on valid). Best row per task in bold.", ""]
    lines += ["## Table 1: single modalities, concatenations and fusion", ""]
    all_rows = order_rows(row for r in results for row in r.rows)
    if results:
        lines.append("| row | " + " | ".join(f"{r.task} ({METRIC_LABELS[r.metric]}, {r.split})" for r in results) + " |")
        lines.append("|---|" + "---|" * len(results))
        stats = {r.task: {row: mean_std(v) for row, v in r.rows.items()} for r in results}
        best = {r.task: _best({k: v[0] for k, v in stats[r.task].items()}, r.metric) for r in results}
        for row in all_rows:
            cells = []
            for r in results:
                if row not in stats[r.task]:
                    cells.append("–")
                    continue
                cell = _fmt(*stats[r.task][row])
                cells.append(f"**{cell}**" if best[r.task] == row else cell)
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    else:
        lines += ["(no results)", ""]

    extra = [(r, metric, per_row) for r in results for metric, per_row in r.extra_metrics.items()]
    if extra:
        lines += ["### Other test metrics", "", "| task | metric | row | mean ± std |", "|---|---|---|---|"]
        for r, metric, per_row in extra:
            for row in order_rows(per_row):
                lines.append(f"| {r.task} | {metric} | {row} | {_fmt(*mean_std(per_row[row]))} |")
        lines.append("")

    lines += ["## Figure 2: robustness to missing modalities", "",
              "Test metric when modalities are withheld at inference: `-m` withholds m from every molecule, "
              "`random25` withholds 25% of (molecule, modality) entries at random (never all of a molecule's). "
              "`concat` = concatenation of all modalities with withheld blocks mean-imputed.", "",
              f"![Figure 2]({FILES['figure2']})", ""]
    for r in results:
        if not r.robustness:
            continue
        lines += [f"**{r.task}** ({METRIC_LABELS[r.metric]})", "",
                  "| pattern | fusion | concat | fusion − concat |", "|---|---|---|---|"]
        for pattern, by_method in r.robustness.items():
            f = mean_std(by_method.get("fusion", []))
            c = mean_std(by_method.get("concat", []))
            diff = f"{f[0] - c[0]:+.3f}" if math.isfinite(f[0]) and math.isfinite(c[0]) else "–"
            lines.append(f"| {pattern} | {_fmt(*f)} | {_fmt(*c)} | {diff} |")
        lines.append("")

    def modality_table(key: str, heading: str, fig: str, what: str) -> None:
        lines.extend([f"## {heading}", "", f"![{heading.split(':')[0]}]({FILES[fig]})", ""])
        mods = list(dict.fromkeys(m for r in results for m in getattr(r, key)))
        if not mods:
            lines.extend([f"(no {what} data)", ""])
            return
        lines.append("| modality | " + " | ".join(r.task for r in results) + " |")
        lines.append("|---|" + "---|" * len(results))
        for m in mods:
            cells = [f"{getattr(r, key)[m]:.3f}" if m in getattr(r, key) else "–" for r in results]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")

    modality_table("reconstruction_cosine", "Figure 3: reconstruction cosine per modality", "figure3", "reconstruction")
    lines += ["## Figure 4: attention weight per modality vs mask rate", "",
              f"![Figure 4]({FILES['figure4']})", ""]
    if not any(r.attention_vs_mask_rate for r in results):
        lines += ["(no attention vs mask rate data)", ""]
    modality_table("attention", "Figure 5: mean attention weight per modality", "figure5", "attention")

    lines += ["## Data", "",
              "Invalid SMILES are rows RDKit cannot parse; they are kept and counted, never dropped. "
              "Scaffold overlap: test molecules whose Bemis-Murcko scaffold also occurs in train "
              "(0 for a scaffold split; a provided split with a large overlap is closer to a random split).", "",
              "| task | split | molecules train/valid/test | invalid SMILES train/valid/test | test scaffolds in train |",
              "|---|---|---|---|---|"]
    for r in results:
        sizes = "/".join(str(r.n_molecules.get(s, "?")) for s in ("train", "valid", "test"))
        invalid = "/".join(str(r.invalid_smiles.get(s, "?")) for s in ("train", "valid", "test"))
        n_test = r.n_molecules.get("test")
        overlap = "–" if r.scaffold_overlap is None else (
            f"{r.scaffold_overlap} of {n_test}" if n_test else str(r.scaffold_overlap))
        lines.append(f"| {r.task} | {r.split} | {sizes} | {invalid} | {overlap} |")
    lines += ["", "Files: " + ", ".join(f"`{v}`" for k, v in FILES.items() if k != "report"), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures
# Object-oriented matplotlib (Figure + savefig): renders with Agg without touching pyplot's
# global backend, so it is safe inside Ray workers and notebooks alike.


def _figure(n_panels: int, width: float = 4.5, height: float = 3.4):
    from matplotlib.figure import Figure

    ncols = max(1, min(3, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120, format="png")


def _figure2(results: Sequence[TaskResult], path: Path) -> None:
    with_data = [r for r in results if r.robustness]
    fig, axes = _figure(max(1, len(with_data)), width=max(4.5, 0.9 * max((len(r.robustness) for r in with_data), default=1)))
    fig.suptitle("Figure 2: performance under modality removal (fusion vs concatenation)")
    if not with_data:
        _no_data(axes[0], "robustness")
    for ax, r in zip(axes, with_data):
        patterns = list(r.robustness)
        x = np.arange(len(patterns))
        for offset, method, color in ((-0.2, "fusion", "tab:blue"), (0.2, "concat", "tab:orange")):
            ms = [mean_std(r.robustness[p].get(method, [])) for p in patterns]
            ax.bar(x + offset, [m for m, _ in ms], 0.4, yerr=[s if math.isfinite(s) else 0 for _, s in ms],
                   label=method, color=color, capsize=2)
        full_concat = [row for row in r.rows if "+" in row]
        refs = [(FUSION, "tab:blue")] + ([(max(full_concat, key=lambda n: n.count("+")), "tab:orange")] if full_concat else [])
        for row, color in refs:
            if row in r.rows and math.isfinite(mean_std(r.rows[row])[0]):
                label = "fusion" if row == FUSION else "concat (all modalities)"
                ax.axhline(mean_std(r.rows[row])[0], color=color, ls="--", lw=1, label=f"{label}, nothing removed")
        ax.set_xticks(x, patterns, rotation=30, ha="right")
        ax.set_ylabel(METRIC_LABELS[r.metric])
        ax.set_title(r.task)
        finite = [v for p in patterns for vals in r.robustness[p].values() for v in _floats(vals) if math.isfinite(v)]
        if finite and r.metric == "roc_auc":
            ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05))
    if with_data:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8)
    _save(fig, path)


def _bars_per_modality(results: Sequence[TaskResult], key: str, ylabel: str, path: Path, title: str) -> None:
    fig, axes = _figure(1, width=7.0, height=4.0)
    ax = axes[0]
    fig.suptitle(title)
    with_data = [r for r in results if getattr(r, key)]
    mods = list(dict.fromkeys(m for r in with_data for m in getattr(r, key)))
    if not mods:
        _no_data(ax, key.replace("_", " "))
        _save(fig, path)
        return
    x = np.arange(len(mods))
    width = 0.8 / len(with_data)
    for i, r in enumerate(with_data):
        values = [getattr(r, key).get(m, np.nan) for m in mods]
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=r.task)
    ax.set_xticks(x, mods)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    _save(fig, path)


def _figure4(results: Sequence[TaskResult], path: Path) -> None:
    with_data = [r for r in results if r.attention_vs_mask_rate]
    fig, axes = _figure(max(1, len(with_data)))
    fig.suptitle("Figure 4: attention weight per modality vs mask rate")
    if not with_data:
        _no_data(axes[0], "attention vs mask rate")
    for ax, r in zip(axes, with_data):
        rates = sorted(r.attention_vs_mask_rate, key=float)
        mods = list(dict.fromkeys(m for rate in rates for m in r.attention_vs_mask_rate[rate]))
        for m in mods:
            ax.plot([float(x) for x in rates], [r.attention_vs_mask_rate[x].get(m, np.nan) for x in rates],
                    marker="o", label=m)
        ax.set_xlabel("mask rate")
        ax.set_ylabel("mean attention weight")
        ax.set_title(r.task)
        ax.legend(fontsize=7)
    _save(fig, path)
