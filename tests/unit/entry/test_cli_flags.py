"""Flags: written in full, unknown ones answered with the closest known flag, `--help` grouped
with one default per flag, and the program named as it was invoked."""

from __future__ import annotations

import dataclasses
import re
import sys

import pytest

from cejobs.cli import build_train_parser, status_main
from cejobs.jobs.config import (EvaluateConfig, GenerateConfig, parse_evaluate_args,
                                parse_generate_args)
from cejobs.settings import build_parser
from cejobs.train import ClassifierTrainConfig

SEE = "(see python -m cejobs.generate --help)"


def refusal(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_prefix_of_a_flag_is_refused_with_a_suggestion(capsys):
    assert refusal(parse_generate_args, ["--step", "5"], capsys) == (
        f"error: unknown flag --step (did you mean --steps?) {SEE}\n")
    assert refusal(parse_generate_args, ["--step=5"], capsys) == (
        f"error: unknown flag --step (did you mean --steps?) {SEE}\n")
    assert parse_generate_args(["--steps", "5"]).steps == 5


def test_misspelt_flag_gets_the_closest(capsys):
    assert refusal(parse_generate_args, ["--sorces", "8"], capsys) == (
        f"error: unknown flag --sorces (did you mean --sources?) {SEE}\n")
    assert refusal(parse_generate_args, ["--zzz"], capsys) == f"error: unknown flag --zzz {SEE}\n"
    err = refusal(parse_evaluate_args, ["--batch", "4"], capsys)
    assert err.startswith("error: unknown flag --batch (did you mean --batch-size?)")
    err = refusal(build_train_parser().parse_args, ["classifier", "--epoch", "3"], capsys)
    assert err.startswith("error: unknown flag --epoch (did you mean --epochs?)")
    # a misspelt flag is named even when a required one is missing
    err = refusal(status_main, ["--stor", "x"], capsys)
    assert err.startswith("error: unknown flag --stor (did you mean --store?)")


def headings(text: str) -> list[str]:
    return re.findall(r"^(\S[^\n]*):$", text, re.M)


@pytest.mark.parametrize("cls, groups", [
    (GenerateConfig, ["options", "what to make", "sampler", "store", "resources", "Ray",
                      "SLURM"]),
    (EvaluateConfig, ["options", "what to evaluate", "resources", "Ray", "SLURM"]),
])
def test_help_is_grouped_with_one_default_per_flag(cls, groups):
    text = build_parser(cls, "prog").format_help()
    assert headings(text) == groups
    fields = dataclasses.fields(cls)
    assert sum(len(names) for names in cls.FLAG_GROUPS.values()) == len(fields)
    flat = " ".join(text.split())
    assert flat.count("(default:") == len(fields)


def test_defaults_said_once():
    flat = " ".join(build_parser(ClassifierTrainConfig, "prog").format_help().split())
    assert "dropout (default: 0.3 when --eps is 0, else 0) --epochs" in flat
    assert flat.count("(default:") == len(dataclasses.fields(ClassifierTrainConfig))
    generate = " ".join(build_parser(GenerateConfig, "prog").format_help().split())
    assert "or py:package.module:factory (docs/models.md); unset: data/digits/diffusion.pt " \
           "(default: unset)" in generate


def test_batch_size_help_per_command():
    evaluate = " ".join(build_parser(EvaluateConfig, "prog").format_help().split())
    generate = " ".join(build_parser(GenerateConfig, "prog").format_help().split())
    assert "--batch-size BATCH_SIZE images per classifier batch (default: 256)" in evaluate
    assert "sampler" not in evaluate.split("--batch-size")[1].split("--")[0]
    assert ("--batch-size BATCH_SIZE CEs per sampler batch (the network sees twice this) "
            "(default: 256)") in generate


def test_every_command_has_a_description(capsys):
    for parse, first in [(parse_generate_args, "Make counterfactual examples"),
                         (parse_evaluate_args, "Run classifiers over CE stores"),
                         (build_train_parser().parse_args, "Train the models"),
                         (status_main, "Shards done / total")]:
        with pytest.raises(SystemExit):
            parse(["--help"])
        assert capsys.readouterr().out.split("\n\n")[1].startswith(first)


@pytest.mark.parametrize("argv0, prog", [
    ("/venv/bin/cejobs-generate", "cejobs-generate"),
    ("/repo/cejobs/generate.py", "python -m cejobs.generate"),
])
def test_program_named_as_invoked(argv0, prog, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [argv0])
    with pytest.raises(SystemExit):
        parse_generate_args(["--help"])
    assert capsys.readouterr().out.startswith(f"usage: {prog} [-h] [--config FILE.toml]")
    assert refusal(parse_generate_args, ["--sorces", "1"], capsys).endswith(
        f"(see {prog} --help)\n")
