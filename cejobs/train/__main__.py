"""`python -m cejobs.train {diffusion,classifier} [--config FILE.toml] [flags]`: the command
line of cejobs.cli.train_main. Nothing imports this module."""

if __name__ == "__main__":
    from cejobs.cli import train_console

    train_console()
