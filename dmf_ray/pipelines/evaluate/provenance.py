"""What the model and its encoders saw before the task: the fusion pretraining corpus (molecule
overlap with the task, per split) and what each encoder's model was trained on (leakage flags).

An encoder declares its training data as ``trained_on`` (an attribute of the Encoder, copied
into its spec and so into the model card): a list of dataset names, optionally prefixed by
their source (``["tdc:BBB_Martins", "moleculenet:bbbp", ...]``). Where the molecules are known
too, an encoder attribute may be ``{"datasets": [...], "mol_ids": [dmf mol_id, ...]}`` (read
from the encoder when the card's spec records no ``trained_on``; the spec itself holds names).

A task whose dataset is among an encoder's ``datasets`` makes every row that uses that encoder
LEAKED: its labels were seen while the encoder was trained. Names match case-insensitively,
ignoring punctuation, and the TDC names of MoleculeNet sets map to the MoleculeNet task names
(:data:`DATASET_ALIASES`). Declared ``mol_ids`` are counted against the task's molecules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from dmf_ray.pipelines.evaluate.protocol import FUSION
from dmf_ray.pipelines.evaluate.taskdata import TaskData
from dmf_ray.pipelines.evaluate.tasks import SPLIT_NAMES, SPLITS

# TDC ADMET / MoleculeNet spellings of the same label sets (normalised: lower case, alphanumerics).
DATASET_ALIASES = {
    "bbbmartins": "bbbp", "bbb": "bbbp", "bbbp": "bbbp",
    "clintox": "clintox", "tox21": "tox21", "toxcast": "toxcast", "sider": "sider", "hiv": "hiv",
    "bace": "bace", "lipophilicityastrazeneca": "lipophilicity", "lipophilicity": "lipophilicity",
    "lipo": "lipophilicity", "hydrationfreeenergyfreesolv": "freesolv", "freesolv": "freesolv",
    "solubilityaqsoldb": "aqsoldb", "esol": "esol", "delaney": "esol",
}


def dataset_key(name: str) -> str:
    """The comparable form of a dataset name: source prefix (``tdc:``) dropped, lower case,
    alphanumerics only, aliases resolved (``tdc:BBB_Martins`` -> ``bbbp``)."""
    key = re.sub(r"[^a-z0-9]", "", name.rpartition(":")[2].lower())
    return DATASET_ALIASES.get(key, key)


def task_dataset(task_name: str, dataset: str | None = None) -> str:
    """The dataset a task's labels come from: ``dataset`` when given, else the task name without a
    ``-scaffold``/``-random``/``-provided`` suffix (``bbbp-scaffold`` -> ``bbbp``)."""
    if dataset:
        return dataset
    base, sep, suffix = task_name.rpartition("-")
    return base if sep and suffix in SPLIT_NAMES else task_name


def trained_on(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """An encoder's declared training data from its spec, or from the encoder itself (older
    cards); None when it declares nothing. Raises ValueError for a malformed declaration."""
    declared = spec.get("trained_on")
    if declared is None:  # a card written before specs recorded it: ask the encoder (built once)
        from dmf_ray.pipelines.evaluate.features import encoders_for

        declared = getattr(encoders_for({"m": spec})["m"], "trained_on", None)
    if not declared:  # None, or an empty list: nothing declared (rule-based encoders)
        return None
    if isinstance(declared, (list, tuple)):
        declared = {"datasets": list(declared), "mol_ids": None}
    elif not isinstance(declared, Mapping):  # an object with attributes
        declared = {"datasets": getattr(declared, "datasets", ()), "mol_ids": getattr(declared, "mol_ids", None)}
    datasets = declared.get("datasets") or []
    if isinstance(datasets, str) or not all(isinstance(d, str) for d in datasets):
        raise ValueError(f"encoder {spec.get('encoder')!r}: trained_on datasets must be a list of names, "
                         f"got {datasets!r}")
    ids = declared.get("mol_ids")
    return {"datasets": list(datasets), "mol_ids": None if ids is None else set(ids)}


def leaked_modalities(dataset: str, declared: Mapping[str, dict[str, Any] | None]) -> dict[str, str]:
    """Modality -> why it is leaked for a task of ``dataset`` (only the leaked ones)."""
    key = dataset_key(dataset)
    out = {}
    for m, info in declared.items():
        hits = [d for d in (info or {}).get("datasets", []) if dataset_key(d) == key]
        if hits:
            out[m] = f"encoder {m!r} was trained on {', '.join(hits)} (the labels of {dataset})"
    return out


def leaked_rows(rows: Iterable[tuple[str, tuple[str, ...]]], modalities: list[str],
                leaked: Mapping[str, str]) -> dict[str, str]:
    """Row name -> reason for every row (name, modalities used; fusion uses all) that uses a leaked modality."""
    out = {}
    for name, combo in rows:
        used = modalities if name.startswith(FUSION) else list(combo)
        reasons = [leaked[m] for m in used if m in leaked]
        if reasons:
            out[name] = "; ".join(reasons)
    return out


def encoder_overlap(data: TaskData, declared: Mapping[str, dict[str, Any] | None]) -> dict[str, dict[str, int]]:
    """Per modality whose encoder declares molecule ids: task molecules among them, per split."""
    out = {}
    for m, info in declared.items():
        ids = (info or {}).get("mol_ids")
        if ids is not None:
            out[m] = {s: int(sum(1 for i in data.split_of(s) if data.mol_ids[i] in ids)) for s in SPLITS}
    return out


def training_corpus(card: Mapping[str, Any]) -> dict[str, Any]:
    """What the model card says about the fusion training run (store, args), JSON-friendly."""
    training = card.get("training")
    if not isinstance(training, Mapping):
        return {"store": None, "note": "the model card has no 'training' section"}
    store = next((training.get(k) for k in ("store", "store_uri", "corpus") if training.get(k)), None)
    info = {"store": store, "args": training.get("args")}
    for k, v in training.items():
        if k not in info and isinstance(v, (str, int, float, bool)):
            info[k] = v
    return info


def corpus_ids(store_uri: str | None) -> tuple[set[str] | None, str]:
    """The molecule ids of the fusion training store, and a line saying what the corpus is
    (never raises: a store that cannot be read here is reported as unknown)."""
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


def corpus_overlap(data: TaskData, corpus: set[str] | None) -> dict[str, int] | None:
    """Task molecules per split that are in the fusion training corpus (None: corpus unknown)."""
    if corpus is None:
        return None
    return {s: int(sum(1 for i in data.split_of(s) if data.mol_ids[i] in corpus)) for s in SPLITS}
