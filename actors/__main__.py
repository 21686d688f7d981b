"""``python -m actors``: the shell client (see :mod:`actors.cluster._shell`)."""

import sys

from .cluster._shell import main

if __name__ == "__main__":
    sys.exit(main())
