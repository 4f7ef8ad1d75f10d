"""``python -m atomscore.cli``: the ``atomscore`` command."""

import sys

from atomscore.cli import main

sys.exit(main())
