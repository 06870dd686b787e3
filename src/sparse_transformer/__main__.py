"""``python -m sparse_transformer ...`` (also under ``torchrun -m sparse_transformer``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
