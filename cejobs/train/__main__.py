"""CLI: python -m cejobs.train {diffusion,classifier} [--config FILE.toml] [flags]; bad input ->
one line, exit 2. Flags and TOML keys come from the training configs (cejobs.settings)."""

from __future__ import annotations

import sys

from cejobs.data import DatasetError
from cejobs.models.checkpoint import CheckpointError
from cejobs.settings import ArgParser, ConfigError, add_flags, from_flags
from cejobs.train.classifier import ClassifierTrainConfig, train_classifier
from cejobs.train.common import TrainError
from cejobs.train.diffusion import DiffusionTrainConfig, train_diffusion

COMMANDS = {
    "diffusion": (DiffusionTrainConfig, train_diffusion, "train the class-conditional score U-Net"),
    "classifier": (ClassifierTrainConfig, train_classifier, "train a (robust) WideResNet classifier"),
}
USER_ERRORS = (TrainError, DatasetError, CheckpointError, ConfigError)


def build_parser() -> ArgParser:
    parser = ArgParser(prog="python -m cejobs.train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgParser)
    for name, (config_cls, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default=None,
                       help="TOML file of fields (keys = flag names with underscores); "
                            "flags override it")
        add_flags(p, config_cls)
    return parser


def parse_train_args(argv: list[str] | None):
    """(config, train function) of a command line."""
    args = vars(build_parser().parse_args(argv))
    config_cls, train, _ = COMMANDS[args.pop("command")]
    return from_flags(config_cls, args), train


def main(argv: list[str] | None = None) -> int:
    cfg, train = parse_train_args(argv)
    train(cfg, argv)
    return 0


def run(argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def console() -> None:
    """The `cejobs-train` console script."""
    sys.exit(run())


if __name__ == "__main__":
    console()
