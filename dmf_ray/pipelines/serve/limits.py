"""The size limits of one request, checked before any encoder work is queued.

Each limit bounds the work one request can ask for: the size of its body (413, from the
Content-Length header before anything is read, else while reading, so a huge body is neither
buffered nor decoded), the count of SMILES (413), the length of each (422) and its heavy atoms
(422). The heavy-atom count comes from RDKit's parser without
sanitization (~10x cheaper than the full parse that follows), so a huge molecule is refused
before the Ingress spends time on it. Every 4xx names the index, the size and the limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from rdkit import Chem, rdBase

from dmf_ray.pipelines.serve.errors import HTTPError, clip


def heavy_atoms(smiles: str) -> int | None:
    """Heavy atoms of ``smiles`` from an unsanitized parse; None if it does not even parse (the
    full parse that follows names why)."""
    with rdBase.BlockLogs():  # the full parse reports problems, per item
        mol = Chem.MolFromSmiles(smiles, sanitize=False)
    return None if mol is None else mol.GetNumHeavyAtoms()


def max_body_bytes(max_smiles: int, max_length: int) -> int:
    """The largest request body read, in bytes: ``max_smiles`` SMILES at ``max_length``
    characters, each character at 2 bytes (JSON encoders may write ``/`` as ``\\/``) plus 16
    bytes of quotes, comma and whitespace, and 64 KiB for the other fields."""
    return max_smiles * (2 * max_length + 16) + 65536


def _too_large(size: str, limit: int) -> HTTPError:
    return HTTPError(413, f"request body of {size} bytes; the limit is {limit} bytes (from max_smiles_per_request "
                          "and max_smiles_length): send fewer or shorter SMILES per request")


async def read_body_capped(request, limit: int) -> bytes:
    """The body of a Starlette ``request``, refused with HTTPError 413 when its Content-Length
    header, or the bytes actually sent (a chunked body has no header), exceed ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(declared, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(f"more than {limit}", limit)
    return bytes(body)


def check_sizes(smiles: Sequence[str], max_smiles: int, max_length: int) -> None:
    """Raise HTTPError for too many SMILES (413) or one too long (422, naming its index, its
    length and the limit). Cheap: no parsing."""
    if len(smiles) > max_smiles:
        raise HTTPError(413, f"{len(smiles)} SMILES in one request; the limit is {max_smiles} "
                             "(max_smiles_per_request): split the request")
    for i, text in enumerate(smiles):
        if len(text) > max_length:
            raise HTTPError(422, f"smiles[{i}] is {len(text)} characters long; the limit is {max_length} "
                                 f"(max_smiles_length): {clip(text)}")


def check_heavy_atoms(smiles: Sequence[str], limit: int, first_index: int = 0) -> None:
    """Raise HTTPError 422 for the first SMILES with more than ``limit`` heavy atoms, naming its
    index (``first_index`` is the index of ``smiles[0]`` in the request), its size and the limit."""
    for i, text in enumerate(smiles, start=first_index):
        n = heavy_atoms(text)
        if n is not None and n > limit:
            raise HTTPError(422, f"smiles[{i}] has {n} heavy atoms; the limit is {limit} "
                                 f"(max_heavy_atoms): {clip(text)}")


def check_limits(smiles: Sequence[str], max_smiles: int, max_length: int, max_heavy_atoms: int) -> None:
    """Every limit at once (``check_sizes`` then ``check_heavy_atoms``)."""
    check_sizes(smiles, max_smiles, max_length)
    check_heavy_atoms(smiles, max_heavy_atoms)
