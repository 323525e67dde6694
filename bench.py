"""Entry point: `python bench.py --help` (the code lives in the bench/ package beside this file)."""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
