"""`python -m bench` = `python bench.py` = the `rmt-bench` console script."""

import sys

from .cli import main

sys.exit(main())
