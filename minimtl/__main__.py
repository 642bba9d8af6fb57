"""python -m minimtl demo | train | eval | predict | experiment (see minimtl/cli.py)."""

import sys

from minimtl.cli import main

sys.exit(main())
