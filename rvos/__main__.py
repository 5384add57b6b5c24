"""``python -m rvos ...``: the ``rvos`` command, also as ``torchrun --nproc-per-node N -m rvos
train CONFIG`` for several processes."""

import sys

from rvos.cli import main

if __name__ == "__main__":
    sys.exit(main())
