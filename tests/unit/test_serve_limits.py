"""Serve's request limits, replica capacity and the encoders' work queue, without Ray."""

import asyncio

import numpy as np
import pytest

from dmf_ray.encoders import create_encoder
from dmf_ray.molecules import parse_smiles
from dmf_ray.pipelines.serve.args import ServeArgs
from dmf_ray.pipelines.serve.capacity import CapacityError, Demand, capped, fit_replicas
from dmf_ray.pipelines.serve.errors import HTTPError
from dmf_ray.pipelines.serve.limits import check_limits, heavy_atoms
from dmf_ray.pipelines.serve.scheduler import EncodeQueue, Job, take_step


# ---- limits ----------------------------------------------------------------------------------


def test_heavy_atoms_counts_without_hydrogens():
    assert heavy_atoms("CCO") == 3
    assert heavy_atoms("[H]C([H])([H])Cl") == 2
    assert heavy_atoms("c1ccccc1") == 6
    assert heavy_atoms("C1CC(") is None  # left to the full parse, which names the reason


def test_heavy_molecule_gets_422_naming_index_size_and_limit():
    with pytest.raises(HTTPError) as info:
        check_limits(["CCO", "C" * 101], max_smiles=8, max_length=2000, max_heavy_atoms=100)
    assert info.value.status == 422
    assert "smiles[1] has 101 heavy atoms; the limit is 100 (max_heavy_atoms)" in info.value.detail
    check_limits(["CCO", "C" * 100], max_smiles=8, max_length=2000, max_heavy_atoms=100)


def test_count_and_length_limits_come_first():
    with pytest.raises(HTTPError) as info:
        check_limits(["C" * 500] * 3, max_smiles=2, max_length=10, max_heavy_atoms=5)
    assert info.value.status == 413 and "3 SMILES" in info.value.detail
    with pytest.raises(HTTPError) as info:
        check_limits(["CCO", "C" * 11], max_smiles=2, max_length=10, max_heavy_atoms=5)
    assert info.value.status == 422 and "smiles[1] is 11 characters long" in info.value.detail


def test_serve_args_fields_all_have_descriptions():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            sub = field.annotation
            for candidate in getattr(sub, "__args__", (sub,)):
                if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
                    walk(candidate)

    walk(ServeArgs)
    args = ServeArgs(model_dir="/m")
    assert args.access_log is False and args.max_heavy_atoms == 100
    with pytest.raises(ValueError, match="max_heavy_atoms"):
        ServeArgs(model_dir="/m", max_heavy_atoms=0)


# ---- capacity --------------------------------------------------------------------------------


def demands(args: ServeArgs) -> list[Demand]:
    return [Demand("Ingress", args.ingress, args.ingress.num_cpus, 0.0),
            Demand("Encoders", args.encoders, args.encoders.num_cpus, 0.0)]


def test_replicas_capped_to_a_two_cpu_node_keeping_room_for_an_ingress():
    args = ServeArgs(model_dir="/m")  # ingress 2 x 0.25 CPU, encoders up to 4 x 1 CPU
    highs = fit_replicas(demands(args), cpus=2, gpus=0, spare_cpus=args.ingress.num_cpus)
    assert highs == {"Ingress": 2, "Encoders": 1}  # 0.5 + 1 + 0.25 spare <= 2; a second encoder would not fit
    highs = fit_replicas(demands(args), cpus=8, gpus=0, spare_cpus=args.ingress.num_cpus)
    assert highs == {"Ingress": 2, "Encoders": 4}  # fits as configured
    assert capped(args.encoders, 1).autoscaling.max_replicas == 1
    assert capped(args.encoders, 9) is args.encoders


def test_minimum_that_cannot_fit_is_one_clear_error():
    args = ServeArgs(model_dir="/m", encoders={"num_cpus": 2})
    with pytest.raises(CapacityError, match="needs 2.75 CPUs .* the cluster has 2 CPUs"):
        fit_replicas(demands(args), cpus=2, gpus=0, spare_cpus=args.ingress.num_cpus)


def test_gpu_shortage_advice_is_about_gpus():
    args = ServeArgs(model_dir="/m")
    gpu = [*demands(args), Demand("Encoder-chemnet", args.gpu_encoders, 1.0, 0.5)]
    with pytest.raises(CapacityError) as info:
        fit_replicas(gpu, cpus=8, gpus=0, spare_cpus=args.ingress.num_cpus)
    text = str(info.value)
    assert "Encoder-chemnet 1 x 1 CPU 0.5 GPU" in text and "gpu_encoders.num_gpus: 0" in text
    assert "more CPUs" not in text  # 8 CPUs are enough


# ---- the encoders' work queue ----------------------------------------------------------------


def job(n_molecules: int, atoms: int) -> Job:
    return Job([None] * n_molecules, [atoms] * n_molecules, ["ecfp"], None)


def test_each_step_shares_atoms_fairly_and_takes_one_molecule_at_least():
    big, small = job(100, 50), job(1, 5)
    step = take_step([big, small], step_atoms=400, max_molecules=512)
    assert [(j is big, a, b) for j, a, b in step] == [(True, 0, 4), (False, 0, 1)]  # 200 atoms each at most
    huge = job(3, 1000)
    step = take_step([huge], step_atoms=400, max_molecules=512)
    assert [(a, b) for _, a, b in step] == [(0, 1)]  # over the share, but one molecule always goes


def test_queue_answers_in_order_and_drops_cancelled_work():
    smiles = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "CCN"]
    molecules = [parse_smiles(s) for s in smiles]
    ecfp = create_encoder("ecfp")

    async def scenario():
        queue = EncodeQueue({"ecfp": ecfp}, step_atoms=10, max_step_molecules=512)
        out = await queue.submit(molecules, [m.mol.GetNumHeavyAtoms() for m in molecules], ["ecfp"])
        np.testing.assert_array_equal(out["ecfp"].values, ecfp.encode(molecules).values)
        many = molecules * 200
        task = asyncio.ensure_future(queue.submit(many, [50] * len(many), ["ecfp"]))  # one molecule per step
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        return queue.stats

    stats = asyncio.run(scenario())
    assert stats.dropped > 0 and stats.encoded + stats.dropped <= 4 + 800


def test_queue_batches_jobs_together_for_gpu_encoders():
    """The GPU path: one encoder call per step over every job's slice, same answers."""
    molecules = [parse_smiles(s) for s in ["CCO", "c1ccccc1", "CCN", "CCCl"]]
    ecfp = create_encoder("ecfp")
    calls = []

    class Counting:
        def encode(self, part):
            calls.append(len(part))
            return ecfp.encode(part)

    async def scenario():
        queue = EncodeQueue({"ecfp": Counting()}, step_atoms=10_000, max_step_molecules=512, together=True)
        atoms = [m.mol.GetNumHeavyAtoms() for m in molecules]
        return await asyncio.gather(queue.submit(molecules[:2], atoms[:2], ["ecfp"]),
                                    queue.submit(molecules[2:], atoms[2:], ["ecfp"]))

    first, second = asyncio.run(scenario())
    np.testing.assert_array_equal(first["ecfp"].values, ecfp.encode(molecules[:2]).values)
    np.testing.assert_array_equal(second["ecfp"].values, ecfp.encode(molecules[2:]).values)
    assert calls == [4]  # both requests in one encoder call
