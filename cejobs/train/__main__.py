"""CLI: python -m cejobs.train {diffusion,classifier} [flags]; bad input -> one line, exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from cejobs.config import ArgParser
from cejobs.data import DatasetError
from cejobs.models.checkpoint import CheckpointError
from cejobs.train.classifier import ClassifierTrainConfig, train_classifier
from cejobs.train.common import TrainError
from cejobs.train.diffusion import DiffusionTrainConfig, train_diffusion

COMMANDS = {
    "diffusion": (DiffusionTrainConfig, train_diffusion, "train the class-conditional score U-Net"),
    "classifier": (ClassifierTrainConfig, train_classifier, "train a (robust) WideResNet classifier"),
}
USER_ERRORS = (TrainError, DatasetError, CheckpointError)


def _type(f: dataclasses.Field):
    t = str(f.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if t.startswith(name):
            return kind
    return str


def build_parser() -> argparse.ArgumentParser:
    parser = ArgParser(prog="python -m cejobs.train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgParser)
    for name, (config_cls, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        for f in dataclasses.fields(config_cls):
            kind = _type(f)
            kwargs = dict(default=f.default, help=f.metadata["help"], dest=f.name)
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = kind
                if f.metadata.get("choices"):
                    kwargs["choices"] = f.metadata["choices"]
            p.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config_cls, train, _ = COMMANDS[args.command]
    cfg = config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})
    train(cfg, argv)
    return 0


def run(argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
