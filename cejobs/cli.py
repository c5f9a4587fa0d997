"""The command lines: `python -m cejobs.generate | evaluate | status | train` and the console
scripts `cejobs-generate | -evaluate | -status | -train` (pyproject.toml) all run the mains here.

Each `*_main(argv)` parses its arguments, runs the driver and returns the exit status; it
raises a `cejobs.errors.CejobsError` on bad input. `run_cli` turns that error into one line,
`error: <message>`, on stderr and exit status 2. This module imports no torch, zarr or ray
when it loads: each main imports its driver when it runs.
"""

from __future__ import annotations

import sys
from typing import Callable

from cejobs.errors import CejobsError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Main = Callable[[list[str] | None], int]
RESUME_NOTE = "interrupted: finished shards are kept; run the same command to resume"


def exit_status(main: Main, argv: list[str] | None = None, *,
                interrupted: str | None = RESUME_NOTE) -> int:
    """`main(argv)`, with a user error printed as one line (status 2); Ctrl-C prints
    `interrupted` (status 130), or stops with its traceback when that is None."""
    try:
        return main(argv)
    except CejobsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED


def run_cli(main: Main, argv: list[str] | None = None, *,
            interrupted: str | None = RESUME_NOTE) -> None:
    """Run a main as a command: exit with its status (`exit_status`)."""
    sys.exit(exit_status(main, argv, interrupted=interrupted))


# ----------------------------------------------------------------------------- generate
def generate_main(argv: list[str] | None = None) -> int:
    """`python -m cejobs.generate`: plan a run, create or resume its store, run its shards on
    the chosen backend (cejobs.drivers.generate). Re-running the same command resumes."""
    from cejobs.drivers.generate import run_generate
    from cejobs.jobs.config import parse_generate_args

    return run_generate(parse_generate_args(argv))[1]


def generate_console() -> None:
    """The `cejobs-generate` console script."""
    run_cli(generate_main)


# ----------------------------------------------------------------------------- evaluate
def evaluate_main(argv: list[str] | None = None) -> int:
    """`python -m cejobs.evaluate`: run classifiers over CE stores, then metrics, tables and
    figures (cejobs.drivers.evaluate). Re-running the same command resumes."""
    from cejobs.drivers.evaluate import run_evaluate
    from cejobs.jobs.config import parse_evaluate_args

    return run_evaluate(parse_evaluate_args(argv))[1]


def evaluate_console() -> None:
    """The `cejobs-evaluate` console script."""
    run_cli(evaluate_main)


# ----------------------------------------------------------------------------- status
def status_main(argv: list[str] | None = None) -> int:
    """`python -m cejobs.status --store PATH [--verify]`: progress of a store, read from the
    store (cejobs.drivers.status); 0 when nothing is damaged."""
    from cejobs.settings import ArgParser, invoked_as

    parser = ArgParser(prog=invoked_as("cejobs.status"),
                       description="Shards done / total, CEs, throughput and ETA of a store.")
    parser.add_argument("--store", required=True, help="zarr store: a path or s3://... URL")
    parser.add_argument("--verify", action="store_true",
                        help="re-read every chunk of every done shard (generation and eval/), "
                             "checking its checksum; rewrite damaged metadata from its copy, "
                             "and mark damaged shards for redo")
    args = parser.parse_args(argv)
    from cejobs.drivers.status import run_status

    return run_status(args.store, verify=args.verify)


def status_console() -> None:
    """The `cejobs-status` console script."""
    run_cli(status_main)


# ----------------------------------------------------------------------------- train
TRAIN_COMMANDS = {
    "diffusion": ("DiffusionTrainConfig", "train_diffusion",
                  "train the class-conditional score U-Net"),
    "classifier": ("ClassifierTrainConfig", "train_classifier",
                   "train a (robust) WideResNet classifier"),
}


TRAIN_DESCRIPTION = (
    "Train the models that generate and evaluate use: the class-conditional score U-Net "
    "(diffusion) or a standard or adversarially robust WideResNet classifier (classifier). "
    "Checkpoints are written to --out; --resume continues from one. "
    "`%(prog)s COMMAND --help` lists a command's flags.")


def build_train_parser():
    """`python -m cejobs.train {diffusion,classifier} [--config FILE.toml] [flags]`; flags and
    TOML keys come from the training configs (cejobs.settings)."""
    import cejobs.train
    from cejobs.settings import CONFIG_HELP, ArgParser, add_flags, invoked_as

    parser = ArgParser(prog=invoked_as("cejobs.train"), description=TRAIN_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgParser,
                                metavar="{diffusion,classifier}")
    for name, (config_name, _, help_text) in TRAIN_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           usage="%(prog)s [-h] [--config FILE.toml] [--FLAG VALUE ...]")
        p.add_argument("--config", default=None, metavar="FILE.toml", help=CONFIG_HELP)
        add_flags(p, getattr(cejobs.train, config_name))
    return parser


def parse_train_args(argv: list[str] | None):
    """(config, train function) of a command line."""
    import cejobs.train
    from cejobs.settings import from_flags

    args = vars(build_train_parser().parse_args(argv))
    config_name, train_name, _ = TRAIN_COMMANDS[args.pop("command")]
    return from_flags(getattr(cejobs.train, config_name), args), getattr(cejobs.train,
                                                                         train_name)


def train_main(argv: list[str] | None = None) -> int:
    """`python -m cejobs.train`: train the diffusion model or a classifier (cejobs.train)."""
    config, train = parse_train_args(argv)
    train(config, argv)
    return 0


def train_console() -> None:
    """The `cejobs-train` console script (Ctrl-C keeps its traceback: training resumes from a
    checkpoint with --resume, not by repeating the command)."""
    run_cli(train_main, interrupted=None)
