"""``python -m taskprune.cli`` is ``taskprune``."""

import sys

from . import main

sys.exit(main())
