"""`dmf quickstart`, the README's main job: featurize -> train -> embed RDKit's own molecules, offline."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from dmf_ray.artifact import read_model_config
from dmf_ray.cli import main
from dmf_ray.encoders import DEFAULT_ENCODERS
from dmf_ray.store import EmbeddingStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quickstart_accounts_for_every_molecule_rdkit_ships(ray_session, tmp_path, capsys):
    out = tmp_path / "quickstart"
    assert main(["quickstart", "--out", str(out), "--epochs", "1"]) == 0

    info = EmbeddingStore.open(str(out / "store")).info()
    assert info["inputs"] > 4_900 and info["inputs"] == info["stored_rows"] + info["failed"]
    assert set(info["modalities"]) == set(DEFAULT_ENCODERS)
    assert all(m["count"] > 0.95 * info["molecules"] for m in info["modalities"].values())

    card = read_model_config(str(out / "model"))
    assert card["fusion"]["modalities"] == list(DEFAULT_ENCODERS)

    # Every input row ends as a fused vector or as a row naming why it has none.
    fused = pq.read_table(out / "fused.parquet")
    failed = fused.filter(fused["error"].is_valid())
    assert fused.num_rows == info["inputs"] and failed.num_rows == info["failed"]
    assert all(failed["error"].to_pylist())
    assert "done:" in capsys.readouterr().err
