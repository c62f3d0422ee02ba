"""Load a downstream benchmark task from CSV files.

A task comes from one of:

- a folder holding ``train.csv``, ``valid.csv`` and ``test.csv`` (the provided split; any of
  ``.csv``, ``.csv.gz``, ``.tsv`` works);
- three files, given as ``(train, valid, test)`` or ``{"train": ..., "valid": ..., "test": ...}``;
- one file, split by this module (scaffold split by default, or random).

A folder or three files can also be pooled and re-split (``split="scaffold"``/``"random"``).

Columns:

- SMILES: given, or the first column whose name (case-insensitive) is one of
  :data:`SMILES_COLUMNS`, else the only column whose name contains ``smiles``.
- labels: given (one name or several), else, for the MoleculeNet sets whose files carry
  descriptor columns beside the label (:data:`KNOWN_LABELS`, matched by task name), the
  documented label columns; else every numeric column except the SMILES column and
  id-like columns (``id``, ``num``, ``index``, ``name``, ``cid``, ``*_id``, ``Unnamed: 0``
  ...). If that finds both 0/1 columns and continuous ones, the choice is ambiguous and
  an error asks for explicit labels instead of guessing.
- kind: ``classification`` if every label column only holds 0/1 (blank = missing; ``true``/
  ``false`` read as 1/0), else ``regression``.
- a label column that cannot be fitted (no label in train; for classification a single class
  overall or in train, e.g. a sparse ToxCast/MUV task under a scaffold split) is kept, listed in
  :attr:`Task.skipped_labels` with the reason, and skipped by every learner and metric; only a
  task where no column can be fitted is refused.

Rows whose SMILES RDKit cannot parse are kept (row order is never changed within a split,
so everything downstream stays aligned) and counted in :attr:`Task.n_invalid_smiles`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmf_ray.pipelines.evaluate import splits as _splits

SPLITS = ("train", "valid", "test")
SPLIT_NAMES = ("provided", "scaffold", "random")
SMILES_COLUMNS = (
    "smiles",
    "canonical_smiles",
    "isomeric_smiles",
    "smiles_string",
    "smile",
    "smi",
    "mol",
    "molecule",
)
# Label columns of the shared MoleculeNet files where "every numeric column" would be wrong
# (bace and esol ship descriptors; freesolv a calculated value) or where we want the
# documented order. Used only when the task name matches and all columns exist.
KNOWN_LABELS: dict[str, list[str]] = {
    "bace": ["Class"],
    "bbbp": ["p_np"],
    "hiv": ["HIV_active"],
    "clintox": ["FDA_APPROVED", "CT_TOX"],
    "esol": ["measured log solubility in mols per litre"],
    "freesolv": ["expt"],
    "lipophilicity": ["exp"],
    "lipo": ["exp"],
}
_ID_NAMES = {
    "id", "idx", "index", "num", "no", "name", "names", "cid", "mol_id", "molecule_id",
    "compound_id", "compound id", "compound", "chembl_id", "cmpd_chemblid", "inchikey",
    "inchi", "iupac", "mol_name", "molecule_name",
}
_ID_PATTERN = re.compile(r"(^unnamed: ?\d+$)|((^|[\s_\-.])(id|idx|index|num|no)$)")
_SEPARATORS = {".tsv": "\t", ".tab": "\t", ".txt": "\t"}


@dataclass
class Task:
    """A loaded task; every per-split field is keyed by ``"train"``, ``"valid"``, ``"test"``.

    ``labels[split]`` is ``float64 [n, T]`` with NaN for a missing label, its columns in the
    order of ``label_names``. ``smiles`` rows are aligned with ``labels`` rows and
    ``smiles_ok`` (False where RDKit cannot parse the SMILES; such rows are kept).
    """

    name: str
    smiles: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    label_names: list[str]
    kind: str
    split_name: str
    smiles_column: str = "smiles"
    label_source: str = "given"
    """How labels were chosen: ``given``, ``known:<task>`` or ``auto``."""
    smiles_ok: dict[str, np.ndarray] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    skipped_labels: dict[str, str] = field(default_factory=dict)
    """Label columns no learner can be fitted on (name -> why: no label in train, or a single
    class overall or in train). They stay in ``labels`` (aligned columns); every learner leaves
    their predictions NaN, so the metrics skip them, and the report says why."""

    @property
    def n_tasks(self) -> int:
        return len(self.label_names)

    @property
    def sizes(self) -> dict[str, int]:
        return {s: len(self.smiles[s]) for s in SPLITS}

    @property
    def n_invalid_smiles(self) -> dict[str, int]:
        """Number of rows per split whose SMILES RDKit cannot parse."""
        return {s: int((~self.smiles_ok[s]).sum()) for s in SPLITS}

    def scaffold_overlap(self, generic: bool = False) -> int:
        """Test molecules whose Bemis-Murcko scaffold also occurs in train."""
        return _splits.scaffold_overlap(self.smiles["train"], self.smiles["test"], generic)


class TaskError(ValueError):
    """A task cannot be loaded; the message names the file and column at fault."""


def _columns_text(columns: Sequence[str], shown: int = 12) -> str:
    """The column names for an error line: the first ``shown`` and how many more (sider has 28
    columns, bace ~590: a line, not a screen)."""
    names = [str(c) for c in columns]
    more = f" ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(repr(n) for n in names[:shown]) + more


def _closest(name: str, columns: Sequence[str]) -> str:
    """'' or " (did you mean 'X'?)" (difflib, case-insensitive) for a column name not found."""
    import difflib

    lower = {str(c).lower(): str(c) for c in columns}
    match = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
    return f" (did you mean {lower[match[0]]!r}?)" if match else ""


def _read_table(path: Path):
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".zip", ".xz")]
    sep = _SEPARATORS.get(suffixes[-1] if suffixes else "", ",")
    try:
        # Read everything as text: we decide what is numeric, and ids keep leading zeros.
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - re-raise with the file name
        # One line: pandas ends its parser messages with a newline, which read as a multi-line
        # config error and printed the message twice.
        raise TaskError(f"cannot read {path}: {' '.join(str(exc).split())}") from exc


def _find_smiles_column(columns: Sequence[str], path: Path) -> str:
    lower = {c.strip().lower(): c for c in columns}
    for cand in SMILES_COLUMNS:
        if cand in lower:
            return lower[cand]
    containing = [c for c in columns if "smiles" in c.lower()]
    if len(containing) == 1:
        return containing[0]
    raise TaskError(
        f"{path}: no SMILES column found among {list(columns)}; expected one of "
        f"{list(SMILES_COLUMNS)} (any case) or pass smiles_column="
    )


_NA_TOKENS = ("", "nan", "na", "n/a", "none", "null")


def _parse_cell(text: str) -> float | None:
    """One label cell -> NaN (blank or an NA token), 1.0/0.0 (``true``/``false``, any case), its
    finite float value, or None when it is none of these (text, ``inf``)."""
    low = text.strip().lower()
    if low in _NA_TOKENS:
        return float("nan")
    if low in ("true", "false"):
        return 1.0 if low == "true" else 0.0
    try:
        value = float(low)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _to_float(values, path: Path, column: str) -> np.ndarray:
    """Column text -> float array (:func:`_parse_cell`); TaskError naming the line of a value
    that is not a number, a boolean or missing."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        value = _parse_cell(v)
        if value is None:
            raise TaskError(
                f"{path}: label column {column!r} has non-numeric value {v!r} (line {i + 2})"
            )
        out[i] = value
    return out


def _is_numeric_column(values) -> bool:
    """Every cell parses (:func:`_parse_cell`) and at least one is not missing."""
    parsed = [_parse_cell(v) for v in values]
    return all(p is not None for p in parsed) and any(not np.isnan(p) for p in parsed)


def _is_id_like(column: str) -> bool:
    c = column.strip().lower()
    return c == "" or c in _ID_NAMES or bool(_ID_PATTERN.search(c))


def _is_binary(y: np.ndarray) -> bool:
    v = y[~np.isnan(y)]
    return bool(np.isin(v, (0.0, 1.0)).all())


def _auto_labels(df, smiles_col: str, path: Path, task_name: str) -> tuple[list[str], str]:
    known = KNOWN_LABELS.get(task_name.lower())
    if known and all(c in df.columns for c in known):
        return list(known), f"known:{task_name.lower()}"
    candidates = [
        c for c in df.columns
        if c != smiles_col and not _is_id_like(c) and _is_numeric_column(df[c])
    ]
    if not candidates:
        raise TaskError(
            f"{path}: no label columns found: columns are {_columns_text(df.columns)}; no numeric "
            f"column other than the SMILES column {smiles_col!r} and id-like columns. "
            "Pass label_columns= (--label NAME)."
        )
    binary = [c for c in candidates if _is_binary(_to_float(df[c], path, c))]
    continuous = [c for c in candidates if c not in binary]
    if binary and continuous:
        raise TaskError(
            f"{path}: cannot tell the labels apart from descriptors: 0/1 columns {binary} "
            f"and continuous columns {continuous}. Pass label_columns= (--label NAME)."
        )
    return candidates, "auto"


def _resolve_sources(source) -> tuple[dict[str, Path] | None, Path | None, str]:
    """-> (three split files or None, one file or None, default task name)."""
    if isinstance(source, Mapping):
        missing = [s for s in SPLITS if s not in source]
        if missing:
            raise TaskError(f"split files given as a mapping lack {missing}; need {list(SPLITS)}")
        files = {s: Path(source[s]) for s in SPLITS}
        return files, None, files["train"].parent.name
    if isinstance(source, (list, tuple)):
        if len(source) != 3:
            raise TaskError(f"give one file, a folder, or three files (train, valid, test); got {len(source)}")
        files = dict(zip(SPLITS, (Path(p) for p in source)))
        return files, None, files["train"].parent.name
    path = Path(source)
    if path.is_dir():
        files = {}
        for s in SPLITS:
            found = [p for p in (path / f"{s}{ext}" for ext in (".csv", ".csv.gz", ".tsv")) if p.is_file()]
            if not found:
                present = sorted(p.name for p in path.iterdir())
                raise FileNotFoundError(
                    f"task folder {path} has no {s}.csv (needs train.csv, valid.csv, test.csv; "
                    f"found {present})"
                )
            files[s] = found[0]
        return files, None, path.name
    if not path.exists():
        raise FileNotFoundError(f"task source not found: {path}")
    name = path.name.split(".")[0]
    return None, path, name


def _columns(tables: dict, smiles_col: str, label_names: list[str]) -> dict[Path, tuple[list[str], np.ndarray]]:
    """Per file: (stripped SMILES, float64 labels [n, T] with NaN for missing). Raises TaskError
    naming the file for a missing column."""
    out = {}
    for p, df in tables.items():
        for col, what in [(smiles_col, "SMILES")] + [(c, "label") for c in label_names]:
            if col not in df.columns:
                raise TaskError(f"{p}: {what} column {col!r} not found{_closest(col, df.columns)}; "
                                f"columns are {_columns_text(df.columns)}")
        smi = [s.strip() for s in df[smiles_col].tolist()]
        y = np.column_stack([_to_float(df[c].tolist(), p, c) for c in label_names]) if len(df) else (
            np.zeros((0, len(label_names)))
        )
        out[p] = (smi, y.reshape(len(df), len(label_names)))
    return out


def _split_rows(per_file: dict, files: dict[str, Path] | None, paths: list[Path], split_name: str,
                fractions: Sequence[float], seed: int, balanced: bool) -> tuple[dict, dict, dict]:
    """(SMILES, labels, RDKit molecules or None) per split: the provided files, or every row pooled
    and split by scaffold or at random."""
    if files and split_name == "provided":
        smiles = {s: per_file[files[s]][0] for s in SPLITS}
        labels = {s: per_file[files[s]][1] for s in SPLITS}
        return smiles, labels, {s: _splits.parse_smiles(smiles[s]) for s in SPLITS}
    all_smiles = [x for p in paths for x in per_file[p][0]]
    all_labels = np.concatenate([per_file[p][1] for p in paths], axis=0)
    all_mols = _splits.parse_smiles(all_smiles)
    if split_name == "scaffold":
        keys = [_splits.scaffold_of_mol(m) for m in all_mols]
        idx = _splits.split_by_groups(keys, fractions, seed, balanced)
    else:
        idx = _splits.random_split(len(all_smiles), fractions, seed)
    smiles = {s: [all_smiles[i] for i in ix] for s, ix in zip(SPLITS, idx)}
    labels = {s: all_labels[ix] for s, ix in zip(SPLITS, idx)}
    return smiles, labels, {s: [all_mols[i] for i in ix] for s, ix in zip(SPLITS, idx)}


def _unfittable(labels: dict[str, np.ndarray], pooled: np.ndarray, j: int, kind: str) -> str | None:
    """Why label column ``j`` cannot be fitted (None when it can): no label in train, or, for
    classification, one class overall or in train."""
    train = labels["train"][:, j]
    if np.isnan(train).all():
        return "no labels in train"
    if kind != "classification":
        return None
    for where, y in (("all splits", pooled[:, j]), ("train", train)):
        classes = np.unique(y[~np.isnan(y)])
        if classes.size < 2:
            return f"only class {classes[0]:g} in {where}"
    return None


def _check_labels(labels: dict[str, np.ndarray], label_names: list[str], kind: str | None,
                  where: str) -> tuple[str, dict[str, str]]:
    """The task kind (given or detected) and the label columns that cannot be fitted (name ->
    why: no label in train, or one class overall or in train). TaskError for an empty label
    column, a forced kind the labels contradict, or when no label column can be fitted."""
    pooled = np.concatenate([labels[s] for s in SPLITS], axis=0)
    for j, c in enumerate(label_names):
        if np.isnan(pooled[:, j]).all():
            raise TaskError(f"{where}: label column {c!r} has no values")
    binary = all(_is_binary(pooled[:, j]) for j in range(len(label_names)))
    if kind == "classification" and not binary:
        bad = [c for j, c in enumerate(label_names) if not _is_binary(pooled[:, j])]
        raise TaskError(f"{where}: kind='classification' but label columns {bad} hold values other than 0/1")
    task_kind = kind or ("classification" if binary else "regression")
    skipped = {c: why for j, c in enumerate(label_names)
               if (why := _unfittable(labels, pooled, j, task_kind)) is not None}
    if len(skipped) == len(label_names):
        raise TaskError(f"{where}: no label column can be fitted: " + "; ".join(
            f"{task_kind} label {c!r} has {why}" for c, why in skipped.items())
            + (" (a one-class task cannot be fitted or scored)" if task_kind == "classification" else ""))
    return task_kind, skipped


def load_task(
    source,
    *,
    smiles_column: str | None = None,
    label_columns: str | Sequence[str] | None = None,
    split: str | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    balanced: bool = False,
    name: str | None = None,
    kind: str | None = None,
) -> Task:
    """Load a task from a folder, three files or one file (see the module docstring).

    ``split``: ``None`` means ``"provided"`` for a folder / three files and ``"scaffold"``
    for one file; ``"scaffold"`` or ``"random"`` on a folder pools the three files and
    re-splits them with ``fractions`` and ``seed`` (``balanced`` picks the seeded balanced
    scaffold variant, see :func:`dmf_ray.pipelines.evaluate.splits.scaffold_split`).
    ``kind`` forces ``"classification"`` or ``"regression"`` instead of detecting it.
    """
    if split is not None and split not in SPLIT_NAMES:
        raise TaskError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    if kind is not None and kind not in ("classification", "regression"):
        raise TaskError(f"kind must be 'classification' or 'regression', got {kind!r}")
    files, single, default_name = _resolve_sources(source)
    task_name = name or default_name
    if single is not None and split == "provided":
        raise TaskError(f"{single}: one file has no provided split; use split='scaffold' or 'random'")
    split_name = split or ("provided" if files else "scaffold")
    labels_given = [label_columns] if isinstance(label_columns, str) else (
        list(label_columns) if label_columns is not None else None
    )
    if labels_given is not None and not labels_given:
        raise TaskError("label_columns is empty")

    paths = list(files.values()) if files else [single]
    tables = {p: _read_table(p) for p in paths}
    first = paths[0]
    smiles_col = smiles_column or _find_smiles_column(list(tables[first].columns), first)
    if labels_given is None:
        # Known labels are looked up by the given name, else by the folder/file name, so a task
        # renamed in the report (``--task mybace=.../bace``, ``bace-scaffold``) keeps them.
        known_as = task_name if task_name.lower() in KNOWN_LABELS else default_name
        label_names, label_source = _auto_labels(tables[first], smiles_col, first, known_as)
    else:
        label_names, label_source = labels_given, "given"
    per_file = _columns(tables, smiles_col, label_names)
    smiles, labels, mols = _split_rows(per_file, files, paths, split_name, fractions, seed, balanced)
    smiles_ok = {s: np.array([m is not None for m in mols[s]], dtype=bool) for s in SPLITS}
    task_kind, skipped = _check_labels(labels, label_names, kind, ", ".join(str(p) for p in paths))
    return Task(
        name=task_name,
        smiles=smiles,
        labels=labels,
        label_names=list(label_names),
        kind=task_kind,
        split_name=split_name,
        smiles_column=smiles_col,
        label_source=label_source,
        smiles_ok=smiles_ok,
        sources=[str(p) for p in paths],
        skipped_labels=skipped,
    )
