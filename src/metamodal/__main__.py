"""``python -m metamodal``: the ``metamodal`` command, also as ``torchrun -m metamodal``."""

import sys

from metamodal.cli import main

if __name__ == "__main__":
    sys.exit(main())
