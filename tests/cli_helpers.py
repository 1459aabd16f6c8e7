"""What the command-line tests share: the CLI's main as a function that returns the exit
status, and the run-time flags that keep a test's output short."""
from relational_rnn import cli

QUIET = ["--no-progress", "--no-plots"]             # run-time flags, also for --resume


def run_cli(argv):
    """The command line's main with argparse's SystemExit turned into the exit status."""
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code
