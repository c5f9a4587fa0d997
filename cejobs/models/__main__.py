"""`python -m cejobs.models convert edm IN.pkl OUT/ --trust-pickle`: the command line of
cejobs.cli.models_main. Nothing imports this module."""

if __name__ == "__main__":
    from cejobs.cli import models_console

    models_console()
