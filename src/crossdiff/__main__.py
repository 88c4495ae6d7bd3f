"""``python -m crossdiff``: the command line."""

import sys

from crossdiff.cli import main

sys.exit(main())
