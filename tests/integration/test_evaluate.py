"""`python -m cejobs.evaluate` on real zarr stores made by generate with tiny models: shards
equal a single pass, resume after SIGKILL, artifacts, and bad input refused before any work."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cejobs.cli import evaluate_main, generate_main
from cejobs.cli import run_cli
from cejobs.jobs import eval_inputs as inputs
from cejobs.eval import metrics as M
from cejobs.models import WRN_PRESETS, WideResNet
from cejobs.models.checkpoint import load_checkpoint, save_checkpoint
from cejobs.store.store import CEStore
from tests.kill_after import KILL_AFTER_ENV
from tests.conftest import REPO, run_module

FAST = ["--backend", "local", "--threads", "1", "--no-progress"]
N, SHARD, CLASSES = 8, 2, 10  # 4 shards; K = 10 CEs per source (per_class 1)


def _classifier(path, seed, **overrides):
    torch.manual_seed(seed)
    kwargs = {**WRN_PRESETS["tiny"], **overrides}
    save_checkpoint(path, WideResNet(**kwargs), kind="classifier", arch="wideresnet",
                    arch_kwargs=kwargs, meta={"dataset": "digits"})
    return path


@pytest.fixture(scope="module")
def world(tiny_models, tmp_path_factory):
    """Two stores (digits test split, and CEs of its CEs) and two 'shipped' classifiers."""
    root = tmp_path_factory.mktemp("eval")
    common = ["--model", str(tiny_models["diffusion"]), "--steps", "2", "--per-class", "1",
              "--shard-size", str(SHARD), "--method", "gaussian", *FAST]
    clean, cec = root / "clean.zarr", root / "cec.zarr"
    assert generate_main(["--store", str(clean), "--split", "test", "--sources", str(N),
                          *common]) == 0
    assert generate_main(["--store", str(cec), "--dataset", f"store:{clean}", "--sources",
                          str(N), *common]) == 0
    shipped = root / "shipped"
    shipped.mkdir()
    shutil.copy(tiny_models["classifier"], shipped / "classifier-standard.pt")
    _classifier(shipped / "classifier-l2-eps1.0.pt", seed=1)
    shutil.copy(tiny_models["classifier"], shipped / "classifier-l2-eps1.0.pt.resume.pt")
    return {"root": root, "clean": clean, "cec": cec, "shipped": shipped,
            "classifier": tiny_models["classifier"]}


def _copy(world, name, tmp_path):
    return shutil.copytree(world[name], tmp_path / f"{name}.zarr")


def _bytes(path):
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _main(argv):
    return evaluate_main([str(a) for a in argv])


def _cli(argv, capsys):
    """run_cli(evaluate_main) in-process: (exit status, its stderr lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(evaluate_main, [str(a) for a in argv])
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def _direct_summary(path, ckpt_path):
    """The classifier applied to the whole store at once, metrics straight from numpy."""
    g = zarr.open_group(str(path), mode="r")
    net = load_checkpoint(ckpt_path, expect_kind="classifier").model
    x, ce = torch.from_numpy(g["source/x"][:]), torch.from_numpy(g["ce/x"][:])
    with torch.no_grad():
        sp = torch.softmax(net(x), -1).numpy()
        cp = torch.softmax(net(ce.flatten(0, 1)), -1).numpy().reshape(*ce.shape[:2], -1)
    y, t, l2 = g["source/y"][:], g["ce/target"][:], g["ce/l2"][:]
    return M.summarize(y, t, l2, sp, cp, shard_size=SHARD), sp, cp


def _assert_close(a, b, path="summary"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5), path
    else:
        assert a == b, path


def test_default_classifiers_two_stores_artifacts(world, tmp_path, monkeypatch, capsys):
    """No --classifier on digits stores: the shipped ones. Sharded results equal a single pass;
    summary.json, tables, report and figures are all written, labelled by store name."""
    monkeypatch.setattr(inputs, "SHIPPED_DIGITS", world["shipped"])
    clean, cec = _copy(world, "clean", tmp_path), _copy(world, "cec", tmp_path)
    assert _main(["--store", clean, "--store", cec, *FAST]) == 0
    out_text = capsys.readouterr().out
    out = tmp_path / "clean.eval"  # the default --out
    assert "l2-eps1.0" in out_text and "standard" in out_text and str(out) in out_text

    # the store arrays: contract of the product spec
    g = zarr.open_group(str(clean), mode="r")
    sp, cp = g["eval/standard/source_prob"], g["eval/standard/ce_prob"]
    assert sp.shape == (N, CLASSES) and cp.shape == (N, CLASSES, CLASSES)
    assert str(sp.dtype) == "float32" and str(cp.dtype) == "float32"
    assert tuple(sp.metadata.dimension_names) == ("source", "class")
    assert tuple(cp.metadata.dimension_names) == ("source", "ce", "class")
    assert sp.chunks == (SHARD, CLASSES) and cp.chunks == (SHARD, CLASSES, CLASSES)
    assert g["eval/standard/done"][:].all()
    attrs = dict(g["eval/standard"].attrs)["cejobs"]
    assert attrs["sha256"] == load_checkpoint(world["shipped"] / "classifier-standard.pt").sha256

    # sharded evaluation == the classifier on the whole store at once
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"cejobs_version", "intervals", "stores"}
    assert summary["intervals"] == {"method": "percentile", "unit": "source", "level": 0.95,
                                    "n_resamples": 2000, "seed": 0}
    by_name = {s["name"]: s for s in summary["stores"]}
    assert set(by_name) == {"clean", "cec"}
    for label, path in (("clean", clean), ("cec", cec)):
        assert list(by_name[label]["classifiers"]) == ["l2-eps1.0", "standard"]
        for name in ("standard", "l2-eps1.0"):
            direct, dsp, dcp = _direct_summary(path, world["shipped"] / f"classifier-{name}.pt")
            g = zarr.open_group(str(path), mode="r")
            np.testing.assert_allclose(g[f"eval/{name}/source_prob"][:], dsp, atol=1e-6)
            np.testing.assert_allclose(g[f"eval/{name}/ce_prob"][:], dcp, atol=1e-6)
            _assert_close(direct, by_name[label]["classifiers"][name])
        assert set(by_name[label]) == {"name", "distances", "classifiers", "path", "info",
                                       "comparisons"}
        assert set(by_name[label]["distances"]) == {"sources", "l2", "l0",
                                                    "ce_distance_classifier"}
    assert by_name["cec"]["info"]["dataset"] == "CEs of clean"
    # CEs of CEs have other sources: compared unpaired, and the report says so
    assert by_name["cec"]["comparisons"]["stores"] == []  # a pair is listed under its a
    (pair,) = by_name["clean"]["comparisons"]["stores"]
    assert (pair["a"], pair["b"], pair["pairing"], pair["sources"]) == ("clean", "cec",
                                                                        "unpaired", [N, N])
    l2 = pair["l2"]["mean"]
    assert l2["difference"]["value"] == pytest.approx(l2["a"]["value"] - l2["b"]["value"])
    assert l2["a"]["value"] == pytest.approx(
        by_name["clean"]["distances"]["l2"]["different_class"]["mean"]["value"])
    clf_rows = [c for s in summary["stores"] for c in s["comparisons"]["classifiers"]]
    assert [(c["store"], c["classifier"], c["reference"], c["pairing"]) for c in clf_rows] == [
        ("clean", "l2-eps1.0", "standard", "paired per CE"), ("cec", "l2-eps1.0", "standard", "paired per CE")]
    psp = clf_rows[0]["prob_source_predicted"]
    assert psp["a"]["value"] == pytest.approx(
        by_name["clean"]["classifiers"]["l2-eps1.0"]["prob_source_predicted"]["value"])

    # the docs' table script reads the same summary: intervals and the comparisons
    import runpy

    table = runpy.run_path(str(REPO / "scripts" / "digits_results_table.py"))
    text = table["tables"](summary)
    iv = by_name["clean"]["classifiers"]["standard"]["ce_accuracy"]["different_class"]
    assert table["ci"](iv, pct=True) in text
    assert f"| clean - cec | unpaired ([{N}, {N}]) |" in text
    assert "| clean | l2-eps1.0 - standard (paired per CE) |" in text
    assert table["ci"]({"value": 0.25, "low": 0.125, "high": 0.5}, pct=True) == "25.0 [12.5, 50.0]"

    # tables, report, figures
    for table in ("accuracy", "quartiles", "distances", "ce_distance_classifier",
                  "store_comparisons", "classifier_comparisons"):
        assert (out / "tables" / f"{table}.csv").stat().st_size > 50
    report = (out / "report.md").read_text()
    for word in ("**clean**", "**cec**", "| clean | standard |", "| cec | l2-eps1.0 |",
                 "| clean | cec | unpaired |", "| clean | l2-eps1.0 | standard | paired per CE |",
                 "95% percentile bootstrap intervals over sources"):
        assert word in report
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs == ["accuracy_bars.png", "ce_grid-cec.png", "ce_grid-clean.png",
                    "confidence_vs_distance-cec.png", "confidence_vs_distance-clean.png",
                    "distance_histograms.png"]
    import matplotlib.image as mpimg

    for name in pngs:
        path = out / "figures" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        h, w = mpimg.imread(path).shape[:2]
        assert 300 < w < 4000 and 200 < h < 4000, (name, w, h)
        assert f"figures/{name}" in report


def test_resume_after_kill(world, tmp_path):
    """SIGKILL after 3 (shard, classifier) writes; the re-run runs only what is missing and the
    arrays equal an uninterrupted run's."""
    clfs = ["--classifier", f"a={world['classifier']}",
            "--classifier", f"b={world['shipped'] / 'classifier-l2-eps1.0.pt'}"]
    killed, whole = _copy(world, "clean", tmp_path), tmp_path / "whole.zarr"
    shutil.copytree(killed, whole)
    args = ["--store", killed, *clfs, "--out", tmp_path / "o1", "--no-figures", *FAST]
    r = run_module("tests.kill_after", "cejobs.evaluate", *args, env={KILL_AFTER_ENV: "3"},
                   check=False)
    assert r.returncode == -9, r.stderr
    store = CEStore.open(killed)
    done_a, done_b = store.done("eval/a"), store.done("eval/b")
    assert done_a.tolist() == [True, True, False, False]  # a and b on shard 0, a on shard 1
    assert done_b.tolist() == [True, False, False, False]
    before = store.read_rows("eval/a/finished_at")

    r = run_module("cejobs.evaluate", *args)
    assert "3 shard(s) to evaluate" in r.stderr  # shards 1-3; shard 0 is not run again
    assert store.done("eval/a").all() and store.done("eval/b").all()
    np.testing.assert_array_equal(store.read_rows("eval/a/finished_at")[:2], before[:2])
    assert _main(["--store", whole, *clfs, "--out", tmp_path / "o2", "--no-figures",
                          *FAST]) == 0
    ref = CEStore.open(whole)
    for name in ("eval/a/source_prob", "eval/a/ce_prob", "eval/b/source_prob", "eval/b/ce_prob"):
        np.testing.assert_array_equal(store.read_rows(name), ref.read_rows(name))
    s1, s2 = (json.loads((tmp_path / o / "summary.json").read_text())["stores"][0]
              for o in ("o1", "o2"))
    assert s1["classifiers"] == s2["classifiers"] and s1["distances"] == s2["distances"]


def test_shape_mismatch_is_one_line_exit_2(world, tmp_path):
    bad = _classifier(tmp_path / "five.pt", seed=0, num_classes=5)
    clean = _copy(world, "clean", tmp_path)
    before = _bytes(clean)
    r = run_module("cejobs.evaluate", "--store", clean, "--classifier", f"five={bad}",
                   *FAST, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "5 classes" in lines[0] and "10 classes" in lines[0], lines
    assert _bytes(clean) == before


def test_incomplete_store_and_allow_partial(world, tmp_path, capsys):
    clean = _copy(world, "clean", tmp_path)
    CEStore.open(clean).clear_done([1])
    clf = ["--classifier", f"standard={world['classifier']}", "--out", tmp_path / "out"]
    before = _bytes(clean)
    code, err = _cli(["--store", clean, *clf, *FAST], capsys)
    assert code == 2 and len(err) == 1 and "incomplete (3 of 4 shards done)" in err[0], err
    assert "--allow-partial" in err[0]
    assert _bytes(clean) == before and not (tmp_path / "out").exists()

    assert _main(["--store", clean, *clf, "--allow-partial", "--no-figures", *FAST]) == 0
    assert "6/8*" in capsys.readouterr().out
    assert CEStore.open(clean).done("eval/standard").tolist() == [True, False, True, True]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "evaluated 6 of 8 sources (shards 0, 2-3 of 4)" in report
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    sources = summary["stores"][0]["classifiers"]["standard"]["sources"]
    assert sources == {"total": 8, "evaluated": 6, "n_shards": 4, "shards": [0, 2, 3]}


def test_other_checkpoint_under_a_used_name_is_refused(world, tmp_path, capsys):
    clean = _copy(world, "clean", tmp_path)
    args = ["--store", clean, "--out", tmp_path / "out", "--no-figures", *FAST]
    assert _main([*args, "--classifier", f"standard={world['classifier']}"]) == 0
    before = _bytes(clean)
    other = world["shipped"] / "classifier-l2-eps1.0.pt"
    code, err = _cli([*args, "--classifier", f"standard={other}"], capsys)
    assert code == 2 and len(err) == 1 and "eval/standard" in err[0], err
    assert _bytes(clean) == before
    code, err = _cli(["--store", clean, "--classifier", "nope"], capsys)
    assert code == 2 and "NAME=CKPT" in err[0]
