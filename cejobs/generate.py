"""`python -m cejobs.generate`: plan a run, create or resume its store, run its shards on the
chosen backend (cejobs.drivers.generate). Re-running the same command resumes."""

from cejobs.cli import command
from cejobs.drivers import api
from cejobs.drivers.generate import run_generate
from cejobs.jobs.config import parse_generate_args

# `python -m cejobs.generate`, `cejobs-generate`, and the API call cejobs.generate(**fields)
main, console = command(__name__, parse_generate_args, run_generate, api.generate)

if __name__ == "__main__":
    console()
