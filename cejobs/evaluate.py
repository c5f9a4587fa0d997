"""`python -m cejobs.evaluate`: the command line of cejobs.cli.evaluate_main (the Python API
is the function `cejobs.evaluate`, cejobs.drivers.api). Nothing imports this module."""

if __name__ == "__main__":
    from cejobs.cli import evaluate_console

    evaluate_console()
