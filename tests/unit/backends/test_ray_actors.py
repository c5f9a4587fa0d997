"""The Ray backend's planning helpers, without Ray running: how many actors of which shape
(cejobs/backends/ray/actors.py), the device an actor computes on, and its one-line errors."""

from __future__ import annotations

import pytest
import torch

from cejobs.backends.ray.actors import ShardActor, actor_device, plan_actors
from cejobs.backends.ray.cluster import loss_reason, one_line
from cejobs.jobs.config import ConfigError, GenerateConfig
from cejobs.jobs.kinds import KINDS
from cejobs.jobs.tasks import ShardTask


def test_plan_one_actor_per_gpu_and_fractions():
    plan = plan_actors({"CPU": 64, "GPU": 8}, workers=0, threads=0, gpus_per_worker=1.0,
                       device="auto", shards=100)
    assert (plan.count, plan.use_gpu, plan.options) == (8, True, {"num_gpus": 1.0, "num_cpus": 1.0})
    plan = plan_actors({"CPU": 64, "GPU": 8}, workers=0, threads=0, gpus_per_worker=0.5,
                       device="auto", shards=100)
    assert plan.count == 16 and plan.options["num_gpus"] == 0.5
    plan = plan_actors({"CPU": 64, "GPU": 8}, workers=0, threads=0, gpus_per_worker=1.0,
                       device="auto", shards=3)
    assert plan.count == 3  # never more actors than shards


def test_plan_cpu_workers():
    plan = plan_actors({"CPU": 16}, workers=0, threads=4, gpus_per_worker=1.0, device="auto",
                       shards=100)
    assert (plan.count, plan.use_gpu, plan.threads) == (4, False, 4)
    assert plan.options == {"num_cpus": 4.0}
    plan = plan_actors({"CPU": 16, "GPU": 2}, workers=0, threads=2, gpus_per_worker=1.0,
                       device="cpu", shards=100)
    assert (plan.count, plan.use_gpu) == (8, False)  # --device cpu: CPU actors on a GPU cluster
    plan = plan_actors({"CPU": 2}, workers=5, threads=1, gpus_per_worker=1.0, device="auto",
                       shards=100)
    assert plan.count == 5 and plan.fits == 2 and "room for 2" in plan.describe()
    with pytest.raises(ConfigError, match="no GPUs"):
        plan_actors({"CPU": 2}, workers=0, threads=1, gpus_per_worker=1.0, device="cuda",
                    shards=1)


def test_actor_device_and_one_line(monkeypatch):
    monkeypatch.delenv("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", raising=False)
    assert actor_device("auto", [], True) == "cpu"
    assert actor_device("cpu", ["0"], True) == "cpu"
    assert actor_device("auto", ["3"], True) == "cuda"  # Ray narrowed CUDA_VISIBLE_DEVICES
    assert actor_device("auto", ["3"], False) == "cpu"  # a fake GPU: compute on CPU
    monkeypatch.setenv("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "1")
    assert actor_device("cuda:0", ["3"], True) == "cuda:3"
    text = "ray::ShardActor.run()\n  File \"x.py\", line 1\nShardError: shard 2: NaN\n"
    assert one_line(text) == "ShardError: shard 2: NaN"
    from ray.exceptions import ActorDiedError, NodeDiedError  # classified by type, not text

    assert loss_reason(ActorDiedError()) == "ActorDiedError (its process died)"
    assert loss_reason(NodeDiedError("node 1 died")) == "NodeDiedError (its node died)"


def test_actor_that_cannot_open_the_store_says_why(tmp_path):
    """A worker on a node that doesn't see the store reports it from ready(), in one line."""
    task = ShardTask(KINDS["generate"], str(tmp_path / "elsewhere.zarr"),
                     GenerateConfig(device="cpu"))
    before = torch.get_num_threads()
    try:
        actor = ShardActor(task, threads=1, use_gpu=False)
        info = actor.ready()
    finally:
        torch.set_num_threads(before)
    assert info["error"] == (f"StoreError: no cejobs store at {tmp_path / 'elsewhere.zarr'} "
                             f"(the store must be on storage every node shares)")
    assert actor.run(3).error == info["error"]
