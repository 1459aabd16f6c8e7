"""``python -m relational_rnn`` = ``python nth_farthest.py`` = ``nth-farthest``."""
import sys

from relational_rnn.cli import main

if __name__ == "__main__":      # not in a --workers process, which imports the main module
    sys.exit(main())
