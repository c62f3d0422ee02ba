"""A failed Ray Data pipeline gives its CPUs back even while its error is kept."""

from __future__ import annotations

import time

import pytest

from dmf_ray.runtime import pipeline_actors_killed_on_failure


def _pipeline():
    import ray

    class _FailingStage:  # defined here so that Ray ships it by value to the workers
        def __call__(self, batch):
            raise ValueError("stage refuses every batch")

    # Two one-CPU actors: the whole test cluster (in-memory items: no read task needs a CPU).
    return ray.data.from_items(list(range(8)), override_num_blocks=4).map_batches(
        _FailingStage, batch_size=2, num_cpus=1, compute=ray.data.ActorPoolStrategy(size=2))


def _cpus_free_within(ray, seconds: float) -> float:
    deadline = time.time() + seconds
    while True:
        free = ray.available_resources().get("CPU", 0.0)
        if free >= ray.cluster_resources()["CPU"] or time.time() > deadline:
            return free
        time.sleep(0.2)


def test_failed_pipeline_frees_its_actors_while_the_error_is_kept(ray_session):
    ray = ray_session
    kept = []
    # A few failures in a row: which actors Ray Data leaves alive depends on which tasks were
    # in flight when the first one failed. The errors are kept, as a notebook keeps them.
    for _ in range(3):
        with pytest.raises(Exception, match="stage refuses every batch") as failure:
            with pipeline_actors_killed_on_failure():
                _pipeline().take_all()
        kept.append(failure.value)
        assert _cpus_free_within(ray, 30) == ray.cluster_resources()["CPU"]
    # And the next pipeline runs, rather than waiting for CPUs that nobody gives back.
    assert ray.data.range(4).map_batches(lambda b: b, num_cpus=1).count() == 4


def test_a_crash_after_ray_started_names_this_sessions_log_folder(ray_session, monkeypatch, capsys, tmp_path):
    """An unexpected error (not a user error) after Ray started: dmf names the log folder of its
    own session (session_latest may be another Ray's), then lets the traceback through."""
    import ray

    from dmf_ray.cli import main
    from dmf_ray.cli import store as store_cli

    def crash(store, as_json):
        raise RuntimeError("boom")

    monkeypatch.setattr(store_cli, "print_store_info", crash)
    with pytest.raises(RuntimeError, match="boom"):
        main(["store", "info", str(tmp_path)])
    logs = ray._private.worker._global_node.get_logs_dir_path()
    assert f"dmf: Ray's logs of this run: {logs}" in capsys.readouterr().err
