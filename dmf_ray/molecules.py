"""Molecule layer: parse SMILES, canonicalise, give every molecule a stable id.

The molecule id is the first 96 bits (24 hex characters) of BLAKE2b over the molecule's
*stable* canonical SMILES: RDKit's canonical isomeric SMILES is not always a fixed point (for
some molecules canonicalising it again gives another string, and that one gives back the
first: rdkit/rdkit#8775, #8721, #6420), so we canonicalise until a string repeats and take the
least string (Python ``min``) of the cycle. Every spelling of such a molecule, and a round trip
through the stored or returned SMILES, then gets the same id. An input that is already RDKit's
canonical SMILES of itself is a fixed point and costs nothing extra (49,975 of 50,000 MOSES
rows); any other spelling costs one more parse and write (see README, "Molecule ids").

Why not InChIKey: InChI generation is slower than the Morgan fingerprint we
compute next to it and would halve featurisation throughput; a 96-bit hash has a collision
probability below 1e-11 for a billion molecules. The id is stable for a given RDKit version
(canonical SMILES can change across RDKit releases), so the store manifest records the RDKit
version that wrote it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rdkit import Chem, rdBase

ID_SCHEME = "blake2b-96(least string of the rdkit canonical isomeric smiles cycle)"
# Canonicalisation rounds before giving up on a cycle (seen: cycles of 2; RDKit's own reports
# show strings that settle after 2-3 rounds). Past it, the least string seen is used.
MAX_CANONICAL_ROUNDS = 8
ID_LENGTH = 24


class InvalidSmilesError(ValueError):
    """A SMILES string RDKit cannot turn into a molecule; the message names the input."""

    def __init__(self, smiles: str, reason: str):
        self.smiles = smiles
        self.reason = reason
        super().__init__(f"SMILES {smiles!r} is invalid: {reason}")


@dataclass(frozen=True)
class Molecule:
    mol_id: str
    smiles: str  # canonical isomeric SMILES
    mol: Chem.Mol


def molecule_id(canonical_smiles: str) -> str:
    return hashlib.blake2b(canonical_smiles.encode(), digest_size=ID_LENGTH // 2).hexdigest()


_TIMESTAMP = re.compile(r"^\[\d\d:\d\d:\d\d\]\s*")


def _reason_from_log(text: str) -> str:
    # RDKit logs a headline, then the input echoed with a caret under the problem; keep the
    # headline, which names the problem ("unclosed ring", "Explicit valence ... C, 5").
    lines = [_TIMESTAMP.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[0] if lines else "RDKit could not parse it"


def _capture_rdkit_errors():
    # rdBase.CaptureErrorLog (RDKit >= 2025.03) keeps the reason and keeps stderr quiet;
    # older RDKit only gives a generic reason.
    capture = getattr(rdBase, "CaptureErrorLog", None)
    return capture() if capture is not None else contextlib.nullcontext()


def parse_smiles(smiles: str) -> Molecule:
    """Parse one SMILES; raise InvalidSmilesError with RDKit's own reason."""
    text = smiles.strip() if isinstance(smiles, str) else smiles
    if not isinstance(text, str) or not text:
        raise InvalidSmilesError("" if smiles is None else str(smiles), "empty SMILES")
    with _capture_rdkit_errors() as capture:
        mol = Chem.MolFromSmiles(text)
    if mol is None:
        raise InvalidSmilesError(text, _reason_from_log(getattr(capture, "messages", "")))
    if mol.GetNumAtoms() == 0:
        raise InvalidSmilesError(text, "no atoms")
    canonical = stable_smiles(text, mol)
    return Molecule(molecule_id(canonical), canonical, mol)


def stable_smiles(text: str, mol: Chem.Mol) -> str:
    """The stable canonical SMILES of ``mol`` (parsed from ``text``): RDKit's canonical SMILES,
    canonicalised again until a string repeats; the least string of that cycle (RDKit
    2026.09: 'O=C(c1ccccc1C(=O)N1C(=O)c2ccccc2C1=O)N1C(=O)c2ccccc2C1=O' alternates between two
    strings). Costs one more parse + write unless ``text`` is its own canonical SMILES."""
    first = Chem.MolToSmiles(mol)
    if first == text:  # the input is a fixed point: no second round needed
        return first
    seen = [first]
    for _ in range(MAX_CANONICAL_ROUNDS):
        again = Chem.MolFromSmiles(seen[-1])
        if again is None:  # RDKit wrote a SMILES it cannot read back; keep what it wrote
            break
        following = Chem.MolToSmiles(again)
        if following in seen:
            return min(seen[seen.index(following):])
        seen.append(following)
    return min(seen)


def iter_parsed(smiles: Iterable[str | None]) -> Iterator[Molecule | InvalidSmilesError]:
    """parse_smiles over many inputs, lazily: each a Molecule or the error for that input. One
    RDKit error capture for them all (a capture per molecule costs ~10% of the parse); the rare
    failures are parsed again alone for their reason. Lazy so that a caller can finish with each
    molecule while it is still in the CPU cache: an RDKit molecule freed at once costs ~8 us,
    20,000 of them freed together at the end of a batch ~36 us each."""
    with _capture_rdkit_errors():
        for text in smiles:
            mol = Chem.MolFromSmiles(text.strip()) if isinstance(text, str) and text.strip() else None
            if mol is None or mol.GetNumAtoms() == 0:
                try:
                    yield parse_smiles(text)
                except InvalidSmilesError as exc:
                    yield exc
                continue
            canonical = stable_smiles(text.strip(), mol)
            yield Molecule(molecule_id(canonical), canonical, mol)


def canonical_id(smiles: str) -> str:
    """The molecule id of any SMILES spelling (raises InvalidSmilesError)."""
    return parse_smiles(smiles).mol_id


def to_selfies(smiles: str) -> str:
    """SELFIES for a SMILES; retry with RDKit's canonical SMILES, as SELFIES-TED does."""
    import selfies

    try:
        return selfies.encoder(smiles)
    except Exception as first_error:  # selfies raises its own EncoderError and others
        canonical = parse_smiles(smiles).smiles
        try:
            return selfies.encoder(canonical)
        except Exception:
            raise InvalidSmilesError(smiles, f"SELFIES conversion failed: {first_error}") from None


def mol_to_bytes(mol: Chem.Mol) -> bytes:
    # RDKit's binary form rebuilds a molecule ~5x faster than re-parsing SMILES, which is
    # what lets encoders run in their own actor pools without paying for a second parse.
    return mol.ToBinary()


def mol_from_bytes(data: bytes) -> Chem.Mol:
    return Chem.Mol(data)
