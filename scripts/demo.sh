#!/usr/bin/env bash
# The main job: set up, then build a synthetic benchmark, train the baseline (~7 min on 2
# CPU cores), evaluate it on test and compositional-test, and segment one test video.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rvos demo --out demo_output --overwrite "$@"
