"""Configuration: TOML + flags (flags win), validation in one line, identity fields."""

import dataclasses
import subprocess
import sys

import pytest

from cejobs.jobs.config import ConfigError, GenerateConfig, parse_generate_args


def test_defaults_are_the_embedded_run():
    c = parse_generate_args([])
    assert (c.dataset, c.method, c.w, c.sigma_ce, c.steps, c.per_class, c.backend) == (
        "digits", "boltzmann", 15.0, 0.2, 1000, 2, "ray")
    assert str(c.resolved_store()) == "runs/digits-boltzmann.zarr"
    assert c.resolved_model().name == "diffusion.pt"


def test_flags_override_toml(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('dataset = "digits"\nsigma_ce = 0.3\nsteps = 50\nmethod = "gaussian"\nw = 2\n')
    c = parse_generate_args(["--config", str(f), "--steps", "7"])
    assert (c.sigma_ce, c.steps, c.method, c.w) == (0.3, 7, "gaussian", 2.0)
    assert isinstance(c.w, float)


def test_indices_and_sources(tmp_path):
    c = parse_generate_args(["--indices", "10:20"])
    assert c.indices == "10:20"
    f = tmp_path / "run.toml"
    f.write_text('indices = "0:5"\n')
    assert parse_generate_args(["--config", str(f), "--sources", "3"]).indices is None


@pytest.mark.parametrize("argv, message", [
    (["--sigma-ce", "0"], "--sigma-ce must be > 0"),
    (["--steps", "0"], r"--steps must be in \[1, 100000\]"),
    (["--steps", "99999999999999999999"], r"--steps must be in \[1, 100000\]"),
    (["--batch-size", "99999999999999999999"], "--batch-size is out of range"),
    (["--w", "inf"], "--w must be a finite number"),
    (["--indices", "5:2"], "--indices must look like A:B"),
    (["--dataset", "mnist"], "unknown --dataset 'mnist'"),
    (["--device", "tpu"], "--device must be"),
    (["--per-class", "0"], r"--per-class must be in \[1, 10000\]"),
])
def test_bad_values(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_generate_args(argv)


def test_unknown_toml_key(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text("sigma = 0.2\n")
    with pytest.raises(ConfigError, match="unknown key 'sigma'"):
        parse_generate_args(["--config", str(f)])


def test_wrong_toml_type(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('steps = "many"\n')
    with pytest.raises(ConfigError, match="steps must be int"):
        parse_generate_args(["--config", str(f)])


def test_identity_fields():
    ident = GenerateConfig().identity()
    assert {"dataset", "method", "w", "sigma_ce", "steps", "per_class", "shard_size", "seed",
            "precision", "split"} <= set(ident)
    assert not {"backend", "device", "store", "workers", "batch_size"} & set(ident)
    assert "robust_step_size" in GenerateConfig(method="robust").identity()


def test_cli_bad_flag_is_one_line():
    r = subprocess.run([sys.executable, "-m", "cejobs.generate", "--method", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error:")
    r = subprocess.run([sys.executable, "-m", "cejobs.generate", "--sigma-ce", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == "error: --sigma-ce must be > 0 (got -1.0)\n"


def test_help_shows_every_flag_with_default():
    r = subprocess.run([sys.executable, "-m", "cejobs.generate", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0
    for flag in ["--config", "--store", "--dataset", "--data-root", "--split", "--sources",
                 "--indices", "--method", "--w", "--sigma-ce", "--steps", "--per-class",
                 "--shard-size", "--seed", "--model", "--classifier", "--backend", "--device",
                 "--precision"]:
        assert flag in r.stdout
    text = " ".join(r.stdout.split())
    assert "(default: 0.2)" in text and "(default: boltzmann)" in text
    assert text.count("(default:") == len(dataclasses.fields(GenerateConfig))  # each field
