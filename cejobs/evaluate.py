"""`python -m cejobs.evaluate`: run classifiers over CE stores, then metrics, tables and figures
(cejobs.drivers.evaluate). Re-running the same command resumes."""

from cejobs.cli import command
from cejobs.drivers import api
from cejobs.drivers.evaluate import run_evaluate
from cejobs.jobs.config import parse_evaluate_args

# `python -m cejobs.evaluate`, `cejobs-evaluate`, and the API call cejobs.evaluate(**fields)
main, console = command(__name__, parse_evaluate_args, run_evaluate, api.evaluate)

if __name__ == "__main__":
    console()
