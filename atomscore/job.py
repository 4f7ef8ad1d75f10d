"""``python -m atomscore.job FOLDER``: run one job folder (see :mod:`atomscore.jobs.runner`)."""

import sys

from atomscore.jobs.runner import main

if __name__ == "__main__":
    sys.exit(main())
