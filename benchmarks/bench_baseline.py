"""Baseline speed and quality benchmarks; same as ``rvos bench --what speed quality``."""

import sys

from rvos.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--what", "speed", "quality", *sys.argv[1:]]))
