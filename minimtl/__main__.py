"""python -m minimtl demo | train | eval | predict (see minimtl/cli.py)."""

import sys

from minimtl.cli import main

sys.exit(main())
