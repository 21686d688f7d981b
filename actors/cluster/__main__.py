"""``python -m actors.cluster``: run a leader and its worker groups (see :mod:`actors.cluster._run`)."""

import sys

from ._run import main

if __name__ == "__main__":
    sys.exit(main())
