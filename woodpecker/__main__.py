"""``python -m woodpecker``: the same command line as ``woodpecker``."""

import sys

from woodpecker.cli import main

sys.exit(main())
