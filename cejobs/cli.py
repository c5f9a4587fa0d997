"""The command lines: `python -m cejobs.generate | evaluate | status | train | models` and
the console scripts `cejobs-generate | -evaluate | -status | -train` (pyproject.toml) all run
the mains here.

Each `*_main(argv)` parses its arguments, runs the driver and returns the exit status; it
raises a `cejobs.errors.CejobsError` on bad input. `run_cli` turns that error into one line,
`error: <message>`, on stderr and exit status 2. This module imports no torch, zarr or ray
when it loads: each main imports its driver when it runs.

Every message of the library goes through `logging`, under the `cejobs` logger; the library
configures no handler (a notebook or script decides what it sees). A command configures it
here (`configure_logging`, called by each main): the command's results (records of
`cejobs.output`) on stdout, every other message at INFO and above on stderr, each as its bare
text.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from cejobs.errors import CejobsError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Main = Callable[[list[str] | None], int]
RESUME_NOTE = "interrupted: finished shards are kept; run the same command to resume"
OUTPUT_LOGGER = "cejobs.output"  # a command's results: its stdout


class _Output(logging.Filter):
    """Records of OUTPUT_LOGGER (`keep`), or every other record (not `keep`)."""

    def __init__(self, keep: bool):
        super().__init__()
        self.keep = keep

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == OUTPUT_LOGGER or record.name.startswith(OUTPUT_LOGGER + ".")
        return ours == self.keep


class _StdStream(logging.StreamHandler):
    """A handler writing to sys.stdout or sys.stderr as they are when a record comes (a test's
    capture, a redirect), not as they were when it was made."""

    def __init__(self, name: str):
        self.name_of_stream = name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self.name_of_stream)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it; the name decides
        pass

    def emit(self, record: logging.LogRecord) -> None:
        """Through `tqdm.write`: an open progress bar is cleared, the line written above it,
        and the bar drawn again below (never a message inside the bar)."""
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()  # a log file shows each line when it happens
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)


def configure_logging(level: int = logging.INFO) -> list[logging.Handler]:
    """A command's logging: the `cejobs` logger's results on stdout, its other messages on
    stderr, as bare lines; the handlers it added (replacing those of an earlier call)."""
    logger = logging.getLogger("cejobs")
    for handler in [h for h in logger.handlers if getattr(h, "cejobs_cli", False)]:
        logger.removeHandler(handler)
    handlers = []
    for stream, keep in (("stdout", True), ("stderr", False)):
        handler = _StdStream(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_Output(keep))
        handler.cejobs_cli = True
        logger.addHandler(handler)
        handlers.append(handler)
    logger.setLevel(level)
    return handlers


def exit_status(main: Main, argv: list[str] | None = None, *,
                interrupted: str | None = RESUME_NOTE) -> int:
    """`main(argv)`, with a user error printed as one line (status 2); Ctrl-C prints
    `interrupted` (status 130), or stops with its traceback when that is None."""
    configure_logging()
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
    configure_logging()
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
    configure_logging()
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
    configure_logging()
    from cejobs.settings import ArgParser, invoked_as

    parser = ArgParser(prog=invoked_as("cejobs.status"),
                       description="Shards done / total, CEs, throughput, the driver working on "
                                   "a store (running, stalled or none) and its ETA.")
    parser.add_argument("--store", required=True, help="zarr store: a path or s3://... URL")
    parser.add_argument("--verify", action="store_true",
                        help="re-read every chunk of every done shard (generation and eval/), "
                             "checking its checksum; rewrite damaged metadata from its copy, "
                             "and mark damaged shards for redo")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (shards, CEs, rate, ETA, drivers, damage "
                             "found) instead of the line")
    args = parser.parse_args(argv)
    from cejobs.drivers.status import run_status

    return run_status(args.store, verify=args.verify, as_json=args.json)


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
    configure_logging()
    config, train = parse_train_args(argv)
    train(config, argv)
    return 0


def train_console() -> None:
    """The `cejobs-train` console script (Ctrl-C keeps its traceback: training resumes from a
    checkpoint with --resume, not by repeating the command)."""
    run_cli(train_main, interrupted=None)


# ----------------------------------------------------------------------------- models
def build_models_parser() -> argparse.ArgumentParser:
    from cejobs.settings import ArgParser

    parser = ArgParser(
        prog="python -m cejobs.models", description="Tools for diffusion models from elsewhere.")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="convert a network into a folder cejobs loads")
    formats = convert.add_subparsers(dest="format", required=True)
    edm = formats.add_parser(
        "edm", help="an EDM (NVlabs/edm) VP network pickle -> edm.json + model.safetensors",
        description="Convert an EDM VP network pickle (VPPrecond around SongUNet) into "
                    "OUT/edm.json and OUT/model.safetensors. Needs EDM's code importable "
                    "(torch_utils, dnnlib on PYTHONPATH).")
    edm.add_argument("pickle", help="EDM's network pickle (e.g. edm-cifar10-32x32-cond-vp.pkl)")
    edm.add_argument("out", help="folder to write (created; must not hold a network)")
    edm.add_argument("--trust-pickle", action="store_true",
                     help="acknowledge that unpickling runs the code inside the file")
    return parser


def models_main(argv: list[str] | None = None) -> int:
    """`python -m cejobs.models convert edm IN.pkl OUT/ --trust-pickle`."""
    from pathlib import Path

    from cejobs.models.edm_convert import convert_edm_pickle

    args = build_models_parser().parse_args(argv)
    init_kwargs = convert_edm_pickle(Path(args.pickle), Path(args.out),
                                     trust_pickle=args.trust_pickle)
    label_dim = init_kwargs.get("label_dim", 0)
    print(f"wrote {args.out}: EDM VP network, {init_kwargs.get('img_channels')}x"
          f"{init_kwargs.get('img_resolution')}x{init_kwargs.get('img_resolution')}, "
          + (f"{label_dim} classes" if label_dim else "unconditional"))
    return 0


def models_console() -> None:
    """`python -m cejobs.models`."""
    run_cli(models_main, interrupted=None)
