"""Shared fixtures. One real local Ray cluster for the whole session (ray.init costs ~8 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Ray Data 2.60 starts 32 FooterReader actors (each a worker process) for every Parquet read
# (ray/data/_internal/datasource_v2/formats/parquet/footer_file_indexer.py): on the 2-CPU test
# clusters a Ray Data join over a tiny store paid for ~100 process starts (`dmf embed --store`
# of 10 molecules through it: 81-91 s at load 6-10, 65 s with 2 actors per read). Set before
# any Ray starts, so the session's cluster, `ray start` heads and the commands tests run in
# their own processes inherit it; the read path is the same, with fewer footer readers.
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")


def rdkit_sample_file() -> str:
    import rdkit

    return os.path.join(os.path.dirname(rdkit.__file__), "Data", "NCI", "first_5K.smi")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray, started once; tests that need Ray take this fixture."""
    import ray

    if not ray.is_initialized():
        tests_dir = str(Path(__file__).resolve().parent)
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            # Workers import the test-only encoders (tests/plugin_encoders.py) from here.
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}},
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # A stalled pipeline should fail the test rather than hang CI.
    ctx.execution_no_progress_timeout_s = 120
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()
