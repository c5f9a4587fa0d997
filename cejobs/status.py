"""`python -m cejobs.status --store PATH [--verify]`: the command line of
cejobs.cli.status_main (the logic is in cejobs.drivers.status). Nothing imports this module."""

if __name__ == "__main__":
    from cejobs.cli import status_console

    status_console()
