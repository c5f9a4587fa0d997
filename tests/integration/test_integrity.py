"""Data integrity (docs/reliability.md): every kind of damage is detected and mended so that
exactly the lost work is redone, unsafe resumes are refused, and bad input or a failing disk
ends the run with one line. The faults and what each ends in are tabled in
docs/reliability.md, "Faults and bad inputs, with results"."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from cejobs.cli import evaluate_main, generate_main, status_main
from cejobs.cli import run_cli
from cejobs.hosts import process_identity
from cejobs.store.format import LEFTOVER_AGE_S
from cejobs.store.store import CEStore
from tests.conftest import REPO
from tests.gate import Gate

G = ["--dataset", "digits", "--sources", "6", "--shard-size", "2", "--per-class", "1",
     "--steps", "8", "--method", "boltzmann-exact", "--seed", "0", "--backend", "local",
     "--threads", "1", "--no-progress"]
CLF = ["--classifier", f"standard={REPO / 'data/digits/classifier-standard.pt'}",
       "--backend", "local", "--threads", "1", "--no-progress", "--no-figures"]
GEN_ARRAYS = ("source/x", "source/y", "source/index", "ce/x", "ce/target", "ce/l2", "ce/l0",
              "shard/done")
EVAL_ARRAYS = ("eval/standard/source_prob", "eval/standard/ce_prob", "eval/standard/done")


def cli(capsys, main, *argv) -> tuple[int, str, str]:
    """A CLI's exit status, stdout and stderr; never a traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return e.value.code, out, err


def arrays(path, names) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return {n: np.asarray(g[n][:]) for n in names}


def assert_equal(a: dict, b: dict) -> None:
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """G, evaluated with one classifier: what every damaged store must become again."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    assert generate_main([*G, "--store", str(store)]) == 0
    assert evaluate_main(["--store", str(store), *CLF,
                          "--out", str(store.with_suffix(".eval"))]) == 0
    return store


@pytest.fixture
def copy(reference, tmp_path) -> Path:
    path = tmp_path / "s.zarr"
    shutil.copytree(reference, path)
    return path


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs of our own at `path` (root only), unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# ---------------------------------------------------------------------------- damage matrix
def _flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _folder(p: Path) -> None:
    p.unlink()
    p.mkdir()
    (p / "stray").write_bytes(b"x")


DAMAGE = {"flip": _flip, "truncate": _truncate, "folder": _folder, "delete": Path.unlink}
PARTIAL = "ce/x/c/1/0/0/0/0.0123456789abcdef0123456789abcdef.partial"
TARGETS = {  # what is damaged -> the file (of shard 1 where it has one)
    "data chunk": "ce/x/c/1/0/0/0/0",
    "flag chunk": "shard/done/c/1",
    "metadata": "ce/x/zarr.json",
    "eval chunk": "eval/standard/ce_prob/c/1/0/0",
    "eval flag chunk": "eval/standard/done/c/1",
    "eval metadata": "eval/standard/ce_prob/zarr.json",
    "group metadata": "ce/zarr.json",
    "eval group metadata": "eval/standard/zarr.json",
    "partial": PARTIAL,
}


@pytest.mark.parametrize("op", list(DAMAGE))
@pytest.mark.parametrize("target", list(TARGETS))
def test_damage_matrix(reference, copy, capsys, target, op):
    """Damage one file; status, status --verify, generate and evaluate each give lines, never a
    traceback; the store then equals the undamaged one (generation and evaluation)."""
    if target == "partial":  # a leftover of a write that died, beside shard 1's chunk
        shutil.copy(copy / TARGETS["data chunk"], copy / PARTIAL)
    path = copy / TARGETS[target]
    DAMAGE[op](path)

    code, out, err = cli(capsys, status_main, "--store", copy)
    assert code in (0, 1)
    code, out, err = cli(capsys, status_main, "--store", copy, "--verify")
    detected = target != "partial" and not (op == "delete" and "flag" in target)
    assert code == (1 if detected else 0), out + err
    if detected:
        assert "verify: " in out and "intact" not in out, out
    if target == "data chunk" and op == "flip":
        assert "shard 1: unreadable chunk ce/x/c/1/0/0/0/0 (fails its checksum)" in out
    if target == "eval chunk":
        assert "eval/standard shard 1:" in out

    code, out, err = cli(capsys, generate_main, *G, "--store", copy)
    assert code == 0, err
    code, out, err = cli(capsys, evaluate_main, "--store", copy, *CLF,
                         "--out", copy.with_suffix(".eval"))
    assert code == 0, err
    assert_equal(arrays(reference, GEN_ARRAYS + EVAL_ARRAYS),
                 arrays(copy, GEN_ARRAYS + EVAL_ARRAYS))
    code, out, err = cli(capsys, status_main, "--store", copy, "--verify")
    assert code == 0 and "all 3 done shards read back intact" in out, out + err


def test_damaged_root_metadata_is_one_line(copy, capsys):
    """The root zarr.json holds the run's identity: damage is one line everywhere, and
    nothing is written."""
    _flip(copy / "zarr.json")
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    for main, argv in ((status_main, ["--store", copy, "--verify"]),
                       (generate_main, [*G, "--store", copy]),
                       (evaluate_main, ["--store", copy, *CLF])):
        code, out, err = cli(capsys, main, *argv)
        assert code == 2 and "root metadata" in one_error(err)
    assert before == {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------- findings
def test_bit_flip_fails_its_checksum_and_the_shard_is_redone(reference, copy, capsys):
    """One flipped byte in ce/x or ce/l2 fails its crc32c; generate redoes that shard."""
    _flip(copy / "ce/l2/c/2/0")
    code, out, _ = cli(capsys, status_main, "--store", copy, "--verify")
    assert code == 1 and "shard 2: unreadable chunk ce/l2/c/2/0 (fails its checksum)" in out
    assert CEStore.open(copy).done().tolist() == [True, True, False]
    code, _, err = cli(capsys, generate_main, *G, "--store", copy)
    assert code == 0 and "1 of 3 shards to run" in err
    assert_equal(arrays(reference, GEN_ARRAYS), arrays(copy, GEN_ARRAYS))


def test_damaged_eval_chunks_are_reevaluated(reference, copy, capsys):
    """A deleted or truncated eval chunk resets that classifier's flag of that shard only;
    evaluate redoes it and reports the undamaged metrics."""
    (copy / "eval/standard/ce_prob/c/1/0/0").unlink()
    _truncate(copy / "eval/standard/source_prob/c/2/0")
    code, out, err = cli(capsys, evaluate_main, "--store", copy, *CLF,
                         "--out", copy.with_suffix(".eval"))
    assert code == 0 and "2 shard(s) to evaluate" in err, err
    assert "redo: eval/standard of shard(s) [1, 2]" in err
    assert_equal(arrays(reference, EVAL_ARRAYS), arrays(copy, EVAL_ARRAYS))
    ref, now = (json.loads((p.with_suffix(".eval") / "summary.json").read_text())["stores"][0]
                for p in (reference, copy))
    assert ref["classifiers"] == now["classifiers"] and ref["distances"] == now["distances"]


def test_evaluate_on_a_damaged_generation_chunk_says_what_to_do(reference, copy, capsys):
    """Evaluate's start checks generation chunks for presence only; a flipped one fails that
    shard's evaluation with one line saying how to redo it."""
    _flip(copy / TARGETS["data chunk"])
    CEStore.open(copy).clear_done([1], "eval/standard")  # shard 1 not yet evaluated
    out = copy.with_suffix(".e")
    code, _, err = cli(capsys, evaluate_main, "--store", copy, *CLF, "--out", out)
    assert code == 1 and "shard 1: its generation chunks do not read back (a checksum fails)" \
        in err and "--verify, then generate" in err
    assert cli(capsys, status_main, "--store", copy, "--verify")[0] == 1
    assert cli(capsys, generate_main, *G, "--store", copy)[0] == 0
    assert cli(capsys, evaluate_main, "--store", copy, *CLF, "--out", out)[0] == 0
    assert_equal(arrays(reference, GEN_ARRAYS + EVAL_ARRAYS),
                 arrays(copy, GEN_ARRAYS + EVAL_ARRAYS))


def test_resume_with_a_changed_dataset_is_refused(tmp_path, capsys):
    """The identity records the sources' content: a rewritten .npz is refused on resume."""
    from cejobs.data import load_dataset

    digits = load_dataset("digits")
    npz = tmp_path / "d.npz"
    np.savez(npz, x=digits.pixels[:10].astype(np.float32) / 16, y=digits.labels[:10])
    store = tmp_path / "n.zarr"
    argv = [*G, "--dataset", npz, "--store", store]
    code, _, err = cli(capsys, generate_main, *argv)
    assert code == 0, err
    CEStore.open(store).clear_done([1])
    before = arrays(store, GEN_ARRAYS)
    np.savez(npz, x=1 - digits.pixels[:10].astype(np.float32) / 16, y=digits.labels[:10])
    code, _, err = cli(capsys, generate_main, *argv)
    assert code == 2 and "sources_sha256" in one_error(err)
    assert_equal(before, arrays(store, GEN_ARRAYS))


def test_dead_ray_address_fails_before_the_store(reference, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "r.zarr"
    code, _, err = cli(capsys, generate_main, *G, "--store", store, "--backend", "ray",
                       "--ray-address", f"127.0.0.1:{port}")
    assert code == 2 and "cannot reach the Ray cluster" in one_error(err)
    assert not store.exists()
    code, _, err = cli(capsys, evaluate_main, "--store", reference, *CLF, "--backend", "ray",
                       "--ray-address", f"127.0.0.1:{port}", "--out", tmp_path / "e")
    assert code == 2 and "cannot reach the Ray cluster" in one_error(err)
    assert not (tmp_path / "e").exists()


def test_read_only_store_is_refused_up_front(reference, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "16m") as mnt:
        store = mnt / "s.zarr"
        shutil.copytree(reference, store)
        CEStore.open(store).clear_done([2])
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        code, _, err = cli(capsys, generate_main, *G, "--store", store)
        assert code == 2 and "Read-only file system" in one_error(err)
        assert "shards to run" not in err  # refused before any work


def test_second_driver_is_refused(reference, tmp_path, capsys):
    """A driver holds the store's generate lease: a second one refuses with one line naming
    it; the first finishes the store, equal to the reference."""
    store = tmp_path / "s.zarr"
    gate = Gate(tmp_path / "gate")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **gate.env}
    first = subprocess.Popen([sys.executable, "-m", "cejobs.generate", *G, "--store", str(store)],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while 0 not in gate.waiting() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0 in gate.waiting(), "the first driver never reached shard 0"
        code, _, err = cli(capsys, generate_main, *G, "--store", store)
        assert code == 2
        assert f"another generate driver is running on {store} (host" in one_error(err)
        assert f"pid {first.pid}" in err
        gate.open()
        assert first.wait(timeout=600) == 0
    finally:
        first.kill()
        first.wait()
    assert_equal(arrays(reference, GEN_ARRAYS), arrays(store, GEN_ARRAYS))
    assert not (store / "leases").exists()


def test_killed_driver_lease_is_taken_over(reference, tmp_path, capsys):
    """A lease whose holder on this host is gone (SIGKILL) does not block a resume."""
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    CEStore.open(store).clear_done([1])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (store / "leases").mkdir()
    (store / "leases/generate.json").write_text(
        json.dumps({**process_identity(), "pid": dead.pid, "since": 0, "token": "x"}))
    assert cli(capsys, generate_main, *G, "--store", store)[0] == 0
    assert_equal(arrays(reference, GEN_ARRAYS), arrays(store, GEN_ARRAYS))


def test_young_partial_of_another_writer_is_kept(copy):
    """A shard's write removes only leftovers older than LEFTOVER_AGE_S: a younger one may be
    another writer's file in flight."""
    store = CEStore.open(copy)
    chunk = store.chunk_path("ce/l2", 1)
    young = chunk.with_name(f"{chunk.name}.{'a' * 32}.partial")
    old = chunk.with_name(f"{chunk.name}.{'b' * 32}.partial")
    young.write_bytes(b"in flight")
    old.write_bytes(b"dead")
    past = time.time() - LEFTOVER_AGE_S - 60
    os.utime(old, (past, past))
    data = {n: store.read_rows(n, store.layout.rows(1)) for n in
            ("source/x", "source/y", "source/index", "ce/x", "ce/target", "ce/l2", "ce/l0")}
    store.write_shard(1, data)
    assert young.exists() and not old.exists()


@pytest.mark.parametrize("case", ["garbage array metadata", "truncated flag", "junk partial",
                                  "dangling symlink", "steps overflow", "cuda without CUDA"])
def test_bad_input_is_one_line_not_a_traceback(reference, copy, tmp_path, capsys, case):
    if case == "garbage array metadata":
        (copy / "ce/l0/zarr.json").write_text("garbage{")
        code, out, err = cli(capsys, status_main, "--store", copy)
        assert code == 0
        code, out, err = cli(capsys, generate_main, *G, "--store", copy)
        assert code == 0 and "ce/l0/zarr.json was damaged: rewritten" in err
    elif case == "truncated flag":
        _truncate(copy / "shard/done/c/2")
        code, out, err = cli(capsys, status_main, "--store", copy)
        assert code == 1 and "2/3 shards done" in out and "shard(s) [2]" in err
        assert cli(capsys, generate_main, *G, "--store", copy)[0] == 0
    elif case == "junk partial":
        (copy / "ce/x/c/junk.partial").write_bytes(b"junk")
        code, out, err = cli(capsys, generate_main, *G, "--store", copy)
        assert code == 0 and "nothing to do" in out and "kept leftover ce/x/c/junk.partial" in err
    elif case == "dangling symlink":
        link = tmp_path / "link.zarr"
        link.symlink_to(tmp_path / "nowhere" / "s.zarr")
        code, _, err = cli(capsys, generate_main, *G, "--store", link)
        assert code == 2 and "symbolic link" in one_error(err)
    else:
        store = tmp_path / "new.zarr"
        flags = (["--steps", "99999999999999999999"] if case == "steps overflow"
                 else ["--device", "cuda"])
        if case == "cuda without CUDA":
            import torch

            if torch.cuda.is_available():
                pytest.skip("CUDA is available here")
        code, _, err = cli(capsys, generate_main, *G, *flags, "--store", store)
        assert code == 2 and not store.exists(), err
        one_error(err)
    if case in ("garbage array metadata", "truncated flag", "junk partial"):
        assert_equal(arrays(reference, GEN_ARRAYS), arrays(copy, GEN_ARRAYS))


def test_bad_training_input_is_one_line(tmp_path):
    from tests.conftest import run_module

    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64))
    for args in (["--base-channels", "3"], ["--dataset", str(empty)]):
        r = run_module("cejobs.train", "diffusion", "--dataset", "digits", "--preset", "tiny",
                       "--steps", "1", "--out", tmp_path / "m.pt", *args, check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_eval_leftover_causes_no_redo(copy, capsys):
    leftover = copy / "eval/standard/ce_prob/c/1/0/0.0123456789abcdef0123456789abcdef.partial"
    leftover.write_bytes(b"x")
    for _ in range(2):
        code, out, err = cli(capsys, generate_main, *G, "--store", copy)
        assert code == 0 and "nothing to do" in out and "redoing" not in err
    past = time.time() - LEFTOVER_AGE_S - 60
    os.utime(leftover, (past, past))
    code, out, err = cli(capsys, generate_main, *G, "--store", copy)
    assert code == 0 and "removed leftover" in err and not leftover.exists()


def test_full_disk_stops_at_the_first_failure(tmp_path, capsys):
    """A disk that fills mid-run stops the run with one line; finished shards stay done and
    read back intact; the resume (with space) equals an uninterrupted run."""
    many = [*G, "--sources", "200", "--steps", "2"]
    ref = tmp_path / "ref.zarr"
    assert cli(capsys, generate_main, *many, "--store", ref)[0] == 0
    with tmpfs(tmp_path / "small", "1m") as mnt:
        store = mnt / "s.zarr"
        code, out, err = cli(capsys, generate_main, *many, "--store", store)
        assert code == 2 and "No space left on device" in one_error(err)
        assert err.count("failed") == 0  # no shard after the first failure was tried
        done = CEStore.open(store).done()
        assert 0 < done.sum() < done.size
        code, out, _ = cli(capsys, status_main, "--store", store, "--verify")
        assert code == 0 and "read back intact" in out
        shutil.copytree(store, tmp_path / "moved.zarr")
    moved = tmp_path / "moved.zarr"
    assert cli(capsys, generate_main, *many, "--store", moved)[0] == 0
    assert_equal(arrays(ref, GEN_ARRAYS), arrays(moved, GEN_ARRAYS))


def test_full_disk_at_creation_is_one_line(tmp_path, capsys):
    with tmpfs(tmp_path / "tiny", "16k") as mnt:
        code, _, err = cli(capsys, generate_main, *G, "--store", mnt / "s.zarr")
        assert code == 2 and "No space left on device" in one_error(err)
        assert not (mnt / "s.zarr").exists()


def test_v1_store_status_verify_evaluate_and_resume(reference, tmp_path, capsys, monkeypatch):
    """A store made before checksums (cejobs-store-v1: no crc32c, no metadata copies, no
    sources_sha256) opens for status, --verify (decode only, and it says so), evaluate, and a
    resume (allowed, with a note)."""
    from zarr.codecs import ZstdCodec

    from cejobs.store import create as store_module

    path = tmp_path / "v1.zarr"
    monkeypatch.setattr(store_module, "COMPRESSORS", (ZstdCodec(level=0),))  # v1's codecs
    assert generate_main([*G, "--store", str(path)]) == 0
    monkeypatch.undo()
    doc = json.loads((path / "zarr.json").read_text())
    attrs = doc["attributes"]["cejobs"]
    attrs["format"] = "cejobs-store-v1"
    del attrs["metadata"], attrs["identity"]["sources_sha256"]
    (path / "zarr.json").write_text(json.dumps(doc))
    CEStore.open(path).clear_done([1])

    code, out, _ = cli(capsys, status_main, "--store", path, "--verify")
    assert code == 0 and "checksums are not recorded in this store" in out
    code, _, err = cli(capsys, generate_main, *G, "--store", path)
    assert code == 0 and "is a cejobs-store-v1 store" in err and "1 of 3 shards" in err
    code, _, err = cli(capsys, evaluate_main, "--store", path, *CLF,
                       "--out", tmp_path / "v1.eval")
    assert code == 0, err
    assert_equal(arrays(reference, GEN_ARRAYS + EVAL_ARRAYS),
                 arrays(path, GEN_ARRAYS + EVAL_ARRAYS))
    (path / "ce/x/zarr.json").write_text("garbage")  # no copy to mend it from: one line
    code, _, err = cli(capsys, generate_main, *G, "--store", path)
    assert code == 2 and "restore ce/x/zarr.json from a backup" in one_error(err)
