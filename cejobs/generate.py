"""`python -m cejobs.generate`: the command line of cejobs.cli.generate_main (the Python API
is the function `cejobs.generate`, cejobs.drivers.api). Nothing imports this module."""

if __name__ == "__main__":
    from cejobs.cli import generate_console

    generate_console()
