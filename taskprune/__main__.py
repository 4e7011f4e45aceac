"""``python -m taskprune`` is ``taskprune``."""

import sys

from .cli import main

sys.exit(main())
