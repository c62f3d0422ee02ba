"""``report.md`` from per-task results: Table 1 (learner per row, LEAKED rows), the paper's
protocol table, Figures 2-5 as tables, the data section, and why any figure is missing."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from dmf_ray.pipelines.evaluate.results import METRIC_LABELS, TaskResult, mean_std, order_rows

LEAKED = "LEAKED"


def fmt(m: float, s: float, digits: int = 3) -> str:
    """``"0.812 ± 0.010"``, or ``"–"`` for a NaN mean."""
    if not math.isfinite(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _header(results: Sequence[TaskResult]) -> list[str]:
    return ["| row | " + " | ".join(f"{r.task} ({METRIC_LABELS[r.metric]}, {r.split})" for r in results) + " |",
            "|---|" + "---|" * len(results)]


def table1(results: Sequence[TaskResult]) -> list[str]:
    """Table 1: mean ± std per row and task, the learner of the cell after ``·``, the best
    non-leaked row in bold, leaked rows marked LEAKED."""
    lines = ["## Table 1: single modalities, concatenations and fusion", ""]
    if not results:
        return lines + ["(no results)", ""]
    lines += _header(results)
    best = {r.task: r.best_row() for r in results}
    for row in order_rows(row for r in results for row in r.rows):
        cells = []
        for r in results:
            if row not in r.rows:
                cells.append("–")
                continue
            cell = f"{fmt(*mean_std(r.rows[row]))} · {r.learner_of(row)}"
            cell = f"**{cell}**" if best[r.task] == row else cell
            cells.append(f"{cell} {LEAKED}" if row in r.leaked else cell)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    leaked = [(r.task, row, why) for r in results for row, why in r.leaked.items()]
    if leaked:
        lines += [f"{LEAKED} rows use an encoder trained on the task's labels; they are left out of "
                  "\"best\":", ""] + [f"- {task} / {row}: {why}" for task, row, why in leaked] + [""]
    return lines


def paper_table(results: Sequence[TaskResult], reason: str | None) -> list[str]:
    """The paper's protocol: XGBoost on the frozen features of every row (``reason``: why not)."""
    lines = ["## Paper protocol: XGBoost on frozen embeddings", "",
             "The reference code of the paper (IBM fm4m) fits XGBoost on frozen embeddings; the same "
             "rows with that learner (its grid chosen on valid), beside Table 1's learner.", ""]
    if reason or not any(r.paper for r in results):
        return lines + [f"(not computed: {reason or 'no rows'})", ""]
    lines += _header(results)
    for row in order_rows(row for r in results for row in r.paper):
        cells = [("–" if row not in r.paper else fmt(*mean_std(r.paper[row])))
                 + (f" {LEAKED}" if row in r.leaked else "") for r in results]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines + [""]


def other_metrics(results: Sequence[TaskResult]) -> list[str]:
    """Secondary test metrics (e.g. MAE for regression) per row."""
    extra = [(r, metric, per_row) for r in results for metric, per_row in r.extra_metrics.items()]
    if not extra:
        return []
    lines = ["### Other test metrics", "", "| task | metric | row | mean ± std |", "|---|---|---|---|"]
    for r, metric, per_row in extra:
        lines += [f"| {r.task} | {metric} | {row} | {fmt(*mean_std(per_row[row]))} |" for row in order_rows(per_row)]
    return lines + [""]


def figure2(results: Sequence[TaskResult], image: str) -> list[str]:
    """Figure 2 as one table per task: fusion vs concatenation under each removal pattern."""
    lines = ["## Figure 2: robustness to missing modalities", "",
             "Test metric when modalities are withheld at inference: `-m` withholds m from every molecule, "
             "`random25` withholds 25% of (molecule, modality) entries at random (never all of a molecule's). "
             "`concat` = concatenation of all modalities with withheld blocks mean-imputed.", "",
             f"![Figure 2]({image})", ""]
    for r in results:
        if not r.robustness:
            continue
        tuned = any("finetuned" in v for v in r.robustness.values())
        lines += [f"**{r.task}** ({METRIC_LABELS[r.metric]})", "",
                  "| pattern | fusion | concat | fusion − concat |" + (" fusion-finetuned |" if tuned else ""),
                  "|---|---|---|---|" + ("---|" if tuned else "")]
        for pattern, by_method in r.robustness.items():
            f = mean_std(by_method.get("fusion", []))
            c = mean_std(by_method.get("concat", []))
            diff = f"{f[0] - c[0]:+.3f}" if math.isfinite(f[0]) and math.isfinite(c[0]) else "–"
            extra = f" {fmt(*mean_std(by_method.get('finetuned', [])))} |" if tuned else ""
            lines.append(f"| {pattern} | {fmt(*f)} | {fmt(*c)} | {diff} |{extra}")
        lines.append("")
    return lines


def modality_table(results: Sequence[TaskResult], key: str, heading: str, image: str, what: str) -> list[str]:
    """A modality x task table of one per-modality figure (``key`` names the TaskResult field)."""
    lines = [f"## {heading}", "", f"![{heading.split(':')[0]}]({image})", ""]
    mods = list(dict.fromkeys(m for r in results for m in getattr(r, key)))
    if not mods:
        return lines + [f"(no {what} data)", ""]
    lines += ["| modality | " + " | ".join(r.task for r in results) + " |", "|---|" + "---|" * len(results)]
    for m in mods:
        cells = [f"{getattr(r, key)[m]:.3f}" if m in getattr(r, key) else "–" for r in results]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines + [""]


def data_section(results: Sequence[TaskResult]) -> list[str]:
    """Sizes, invalid SMILES and scaffold overlap per task."""
    lines = ["## Data", "",
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
    return lines + [""]


def not_computed(results: Sequence[TaskResult]) -> list[str]:
    """Every figure or row without a number, with the reason (empty when everything was computed)."""
    missing = [(r.task, what, why) for r in results for what, why in r.not_computed.items()]
    if not missing:
        return []
    return (["## Not computed", "", "| task | figure | why |", "|---|---|---|"]
            + [f"| {task} | {what} | {why} |" for task, what, why in missing] + [""])


def markdown(results: Sequence[TaskResult], title: str, files: Mapping[str, str],
             paper_reason: str | None = None) -> str:
    """The whole results part of ``report.md`` (``files``: FILES of the report writer)."""
    learners = sorted({name for r in results for seeds in r.learners.values() for name in seeds})
    lines = [f"# {title}", "",
             f"Test metric, mean ± sample std over seeds; after `·` the downstream learner of the cell "
             f"({', '.join(learners) or 'none'}; each with its grid point chosen on valid). "
             "Best non-leaked row per task in bold.", ""]
    lines += table1(results) + other_metrics(results) + paper_table(results, paper_reason)
    lines += figure2(results, files["figure2"])
    lines += modality_table(results, "reconstruction_cosine", "Figure 3: reconstruction cosine per modality",
                            files["figure3"], "reconstruction")
    lines += ["## Figure 4: attention weight per modality vs mask rate", "", f"![Figure 4]({files['figure4']})", ""]
    if not any(r.attention_vs_mask_rate for r in results):
        lines += ["(no attention vs mask rate data)", ""]
    lines += modality_table(results, "attention", "Figure 5: mean attention weight per modality",
                            files["figure5"], "attention")
    lines += not_computed(results) + data_section(results)
    lines += ["Files: " + ", ".join(f"`{v}`" for k, v in files.items() if k != "report"), ""]
    return "\n".join(lines)
