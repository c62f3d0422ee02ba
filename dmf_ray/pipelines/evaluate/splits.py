"""Train/valid/test splits: Bemis-Murcko scaffold split and random split.

Scaffolds are RDKit ``MurckoScaffold`` SMILES of the *non-generic* Bemis-Murcko framework
(atom and bond types kept, chirality dropped), the convention of DeepChem and chemprop, so
numbers compare with published scaffold splits. ``generic=True`` switches to generic
frameworks (all atoms carbon, all bonds single), which groups more aggressively.

Conventions that matter for reading the numbers:

- Acyclic molecules all have the empty scaffold ``""`` and therefore form one group
  (they all land in the same split), as in DeepChem/chemprop.
- A SMILES that RDKit cannot parse gets a group of its own (it shares a scaffold with
  nothing), so invalid rows are kept, never dropped, and never cause leakage.
- The split never puts two molecules with the same scaffold into different splits; in
  particular no scaffold is shared between train and test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Fractions = tuple[float, float, float]


def _check_fractions(fractions: Sequence[float]) -> Fractions:
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, valid, test), got {tuple(fractions)!r}")
    f = tuple(float(x) for x in fractions)
    if any(x < 0 for x in f) or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {f!r}")
    return f  # type: ignore[return-value]


def parse_smiles(smiles: Sequence[str]) -> list:
    """RDKit molecules (``None`` where the SMILES does not parse or is blank), logs silenced."""
    from rdkit import Chem, rdBase

    mols = []
    with rdBase.BlockLogs():
        for s in smiles:
            if not isinstance(s, str) or not s.strip():
                mols.append(None)
                continue
            mols.append(Chem.MolFromSmiles(s.strip()))
    return mols


def scaffold_of_mol(mol, generic: bool = False) -> str | None:
    """Bemis-Murcko scaffold SMILES of a molecule; ``None`` if ``mol`` is None or RDKit fails."""
    if mol is None:
        return None
    from rdkit import Chem, rdBase
    from rdkit.Chem.Scaffolds import MurckoScaffold

    try:
        with rdBase.BlockLogs():
            if generic:
                core = MurckoScaffold.MakeScaffoldGeneric(MurckoScaffold.GetScaffoldForMol(mol))
                return Chem.MolToSmiles(core)
            return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)
    except Exception:  # noqa: BLE001 - exotic valences etc.: treat like an unparsable row
        return None


def scaffold_keys(smiles: Sequence[str], generic: bool = False) -> list[str | None]:
    """One scaffold per SMILES (``None`` for invalid SMILES), aligned with the input."""
    return [scaffold_of_mol(m, generic) for m in parse_smiles(smiles)]


def _groups(keys: Sequence[str | None]) -> list[list[int]]:
    """Indices grouped by scaffold, in order of first occurrence; ``None`` keys are singletons."""
    by_key: dict[str, list[int]] = {}
    groups: list[list[int]] = []
    for i, k in enumerate(keys):
        if k is None:
            groups.append([i])
        elif k in by_key:
            by_key[k].append(i)
        else:
            by_key[k] = [i]
            groups.append(by_key[k])
    return groups


def split_by_groups(
    keys: Sequence[str | None],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    balanced: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign whole groups (same key) to train/valid/test; see :func:`scaffold_split`."""
    f_train, f_valid, _ = _check_fractions(fractions)
    n = len(keys)
    train_cap, valid_cap = f_train * n, f_valid * n
    groups = _groups(keys)
    if balanced:
        # chemprop's "balanced" scaffold split: groups too big to fit half of valid/test go
        # first (so they end up in train), everything else in a seeded random order.
        rng = np.random.default_rng(seed)
        big_limit = min(f_valid, 1.0 - f_train - f_valid) * n / 2
        big = [g for g in groups if len(g) > big_limit]
        small = [g for g in groups if len(g) <= big_limit]
        rng.shuffle(big)  # type: ignore[arg-type]
        rng.shuffle(small)  # type: ignore[arg-type]
        ordered = big + small
    else:
        # Standard deterministic split: largest groups first (ties by first occurrence), so
        # frequent scaffolds train the model and test holds the rare ones. ``seed`` unused.
        ordered = sorted(groups, key=lambda g: (-len(g), g[0]))
    train: list[int] = []
    valid: list[int] = []
    test: list[int] = []
    for g in ordered:
        if len(train) + len(g) <= train_cap + 1e-9:
            train.extend(g)
        elif len(valid) + len(g) <= valid_cap + 1e-9:
            valid.extend(g)
        else:
            test.extend(g)
    return tuple(np.array(sorted(x), dtype=np.int64) for x in (train, valid, test))  # type: ignore[return-value]


def scaffold_split(
    smiles: Sequence[str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    balanced: bool = False,
    generic: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bemis-Murcko scaffold split -> ``(train_idx, valid_idx, test_idx)`` (sorted int arrays).

    Whole scaffold groups go to one split, so no scaffold is shared between splits.
    ``balanced=False`` (default) is the standard deterministic split: groups sorted by size,
    largest first, fill train up to its fraction, then valid, the rest goes to test; ``seed``
    is ignored. ``balanced=True`` is chemprop's seeded variant: groups larger than half of
    the valid/test size are placed first, the rest in a random order drawn from ``seed``,
    so different seeds give different (still scaffold-disjoint) splits. Invalid SMILES each
    form their own group.
    """
    return split_by_groups(scaffold_keys(smiles, generic), fractions, seed, balanced)


def random_split(
    smiles_or_n: Sequence[str] | int,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded random split -> ``(train_idx, valid_idx, test_idx)`` (sorted int arrays)."""
    f_train, f_valid, _ = _check_fractions(fractions)
    n = smiles_or_n if isinstance(smiles_or_n, int) else len(smiles_or_n)
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(f_train * n))
    n_valid = min(int(round(f_valid * n)), n - n_train)
    parts = perm[:n_train], perm[n_train : n_train + n_valid], perm[n_train + n_valid :]
    return tuple(np.sort(p).astype(np.int64) for p in parts)  # type: ignore[return-value]


def scaffold_overlap(
    train_smiles: Sequence[str], test_smiles: Sequence[str], generic: bool = False
) -> int:
    """Number of test molecules whose scaffold also occurs in train (leakage indicator).

    Invalid SMILES never count. Acyclic molecules share the empty scaffold, consistent with
    how :func:`scaffold_split` groups them (so its own splits always give 0).
    """
    train_scaffolds = {k for k in scaffold_keys(train_smiles, generic) if k is not None}
    return sum(1 for k in scaffold_keys(test_smiles, generic) if k is not None and k in train_scaffolds)
