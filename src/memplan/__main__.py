"""``python -m memplan``."""

import sys

from memplan.cli.main import main

sys.exit(main())
