"""The execution layer's single homes: job kinds, the repair policy, typed settings (ranges,
choices, TOML for every command), the shard watchdog and Ray's fence. The claim board's retry
rule is in tests/unit/backends/test_claims.py."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cejobs.jobs.config import EvaluateConfig, GenerateConfig, parse_evaluate_args
from cejobs.jobs.kinds import KINDS, pending_shards
from cejobs.store.layout import Layout, generation_arrays
from cejobs.store.repair import repair
from cejobs.store.create import create_eval_arrays, create_or_open
from cejobs.store.store import CEStore
from cejobs.jobs.tasks import ShardTask
from cejobs.settings import ConfigError
from cejobs.cli import parse_train_args

LAYOUT = Layout(num_sources=6, ces_per_source=2, num_classes=2, image_shape=(1, 2, 2),
                shard_size=2)


def _store(path) -> CEStore:
    """A store of ce/l2 and l0 only (and the shard flags and timings)."""
    arrays = {k: v for k, v in generation_arrays().items()
              if k in ("ce/l2", "ce/l0") or k.startswith("shard/")}
    return create_or_open(path, {"seed": 0}, LAYOUT, arrays, {"config": {}})


def _shard(value: float) -> dict[str, np.ndarray]:
    return {"ce/l2": np.full((2, 2), value, np.float32),
            "ce/l0": np.full((2, 2), value, np.float32)}


def test_evaluate_kind_asks_the_store(tmp_path):
    store = _store(tmp_path / "s.zarr")
    for s in (0, 1):
        store.write_shard(s, _shard(s))
    for name in ("a", "b"):
        create_eval_arrays(store, name, {"classifier": name, "path": "x", "sha256": name * 64})
    store.write_shard(0, {}, prefix="eval/a")
    store.write_shard(0, {}, prefix="eval/b")
    store.write_shard(1, {}, prefix="eval/a")
    where = str(store.storage)
    task = ShardTask(KINDS["evaluate"], where, EvaluateConfig(store=[where]),
                     {"classifiers": {"a": {}, "b": {}}})
    job = task.job
    assert job is KINDS["evaluate"] and job.namespace == "eval"
    assert pending_shards(store, task) == [1]  # shard 2 is not generated; shard 0 is evaluated
    assert (job.timing_prefix(task), job.ce_factor(task)) == ("eval/a", 2)
    generate = ShardTask(KINDS["generate"], str(store.storage), GenerateConfig())
    assert pending_shards(store, generate) == [2]
    assert store.classifier_sha256("b") == "b" * 64 and store.classifier_sha256("c") is None
    # the typed config travels with the task (Ray and submitit pickle it)
    assert pickle.loads(pickle.dumps(task)).config == task.config


def test_repair_policy(tmp_path):
    store = _store(tmp_path / "s.zarr")
    for s in range(3):
        store.write_shard(s, _shard(s))
    store.chunk_path("ce/l2", 0).unlink()  # shard 0: a missing chunk
    leftover = store.chunk_path("ce/l2", 1).with_name("0.0123abcd.partial")
    leftover.write_bytes(b"x")  # shard 1: a leftover only
    bad = store.chunk_path("ce/l0", 2)
    bad.write_bytes(b"garbage")  # shard 2: a chunk that does not decode

    cheap = repair(store)  # generate's start: presence only
    assert cheap.generation == [0] and store.done().tolist() == [False, True, True]
    full = repair(store, decode=True)  # status --verify: every chunk decoded
    assert full.generation == [2] and store.done().tolist() == [False, True, False]
    assert cheap.lines()[0] == "verify: shard 0: missing chunk ce/l2/c/0/0"
    assert any(f.text.startswith("kept leftover ce/l2/c/1/0.0123abcd.partial")
               for f in full.findings)  # a leftover is not damage


@pytest.mark.parametrize("values, message", [
    ({"threshold": 1}, "unknown key 'threshold' in configuration"),
    ({"robust_threshold": 1.0}, "--robust-threshold must be in (0, 1) (got 1.0)"),
    ({"gpus_per_worker": 0.0}, "--gpus-per-worker must be > 0 (got 0.0)"),
    ({"max_retries": -1}, "--max-retries must be >= 0 (got -1)"),
    ({"precision": "fp16"}, "--precision must be one of fp32, bf16 (got 'fp16')"),
    ({"backend": "k8s"}, "--backend must be one of local, ray, slurm (got 'k8s')"),
])
def test_settings_checks_are_one_line(values, message):
    from cejobs.settings import typed

    with pytest.raises(ConfigError) as e:
        typed(GenerateConfig, values)
    assert str(e.value).endswith(message) and "\n" not in str(e.value)


def test_every_command_reads_toml(tmp_path):
    f = tmp_path / "train.toml"
    f.write_text('dataset = "digits"\npreset = "tiny"\nlr = 1\nsteps = 7\n')
    cfg, _ = parse_train_args(["diffusion", "--config", str(f), "--steps", "9"])
    assert (cfg.dataset, cfg.preset, cfg.lr, cfg.steps) == ("digits", "tiny", 1.0, 9)
    assert "lr" in cfg.identity() and "steps" not in cfg.identity()
    f.write_text('eps = -1\n')
    with pytest.raises(ConfigError, match="--eps must be >= 0"):
        parse_train_args(["classifier", "--config", str(f)])
    f = tmp_path / "eval.toml"
    f.write_text('store = ["a.zarr", "b.zarr"]\nclassifier = ["x=x.pt"]\nfigures = false\n')
    cfg = parse_evaluate_args(["--config", str(f), "--backend", "ray"])
    assert (cfg.store, cfg.classifier, cfg.figures, cfg.backend) == (
        ["a.zarr", "b.zarr"], ["x=x.pt"], False, "ray")
    with pytest.raises(ConfigError, match="give at least one --store"):
        parse_evaluate_args([])


# ---------------------------------------------------------------------------- the watchdog
def test_shard_timeout_is_set_or_derived_from_finished_shards():
    from cejobs.backends.watchdog import FACTOR, FLOOR_S, shard_timeout

    assert shard_timeout(30, []) == 30.0  # --shard-timeout wins
    assert shard_timeout(0, []) is None  # nothing finished yet: no timeout
    assert shard_timeout(0, [1.0, 2.0, 400.0]) == FLOOR_S  # 10 x median 2 s is under the floor
    assert shard_timeout(0, [60.0, 50.0, 70.0, float("nan")]) == FACTOR * 60.0


def test_ray_fence_is_shorter_than_node_death():
    from cejobs.backends.ray.actors import fence_seconds

    assert fence_seconds({}) == 7.5  # Ray's defaults: dead after 5 checks 3 s apart (15 s)
    assert fence_seconds({"RAY_health_check_period_ms": "1000",
                          "RAY_health_check_failure_threshold": "3"}) == 1.5
    assert fence_seconds({"RAY_health_check_period_ms": "100",
                          "RAY_health_check_failure_threshold": "2"}) == 1.0


