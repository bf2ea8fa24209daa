"""``python -m difflab`` is the difflab command line."""

import sys

from difflab.cli import main

sys.exit(main())
