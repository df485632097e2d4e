#!/usr/bin/env bash
# Set up (once) and run the checks and the tests: ruff, mypy, pytest (what CI runs, through .ci/run).
# Usage: ./test.sh [PYTEST ARGS ...]   e.g. ./test.sh tests/core -x
#        The main suite runs in RELAX_TEST_WORKERS (default 2) pytest-xdist workers with one torch thread each
#        (OMP_NUM_THREADS=1): on 2 cores, 10 min instead of 25. RELAX_TEST_WORKERS=0 runs it in this process.
#        ./test.sh --escnn             the escnn tests, in their own environment (.venv-escnn, numpy<2)
#        ./test.sh --mace | --nequip   the MACE / NequIP tests, each in its own environment (.venv-mace, .venv-nequip)
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh
if [ "${1:-}" = "--escnn" ]; then
  shift
  ensure_venv .venv-escnn dev,escnn
  python -c "import escnn" 2>/dev/null || python -m pip install --quiet --no-deps escnn==1.0.11
  python -m pytest -q tests/ops/test_escnn.py "$@"
  exit
fi
if [ "${1:-}" = "--mace" ]; then
  shift
  ensure_venv .venv-mace dev,mace
  python -m pip show mace-torch 2>/dev/null | grep -qx "Version: 0.3.16" ||
    python -m pip install --quiet --no-deps mace-torch==0.3.16
  python -m pytest -q tests/extras/test_mace.py "$@"
  exit
fi
if [ "${1:-}" = "--nequip" ]; then
  shift
  ensure_venv .venv-nequip dev,nequip
  python -m pytest -q tests/extras/test_nequip.py "$@"
  exit
fi
ensure_venv .venv dev
ruff check .
ruff format --check .
mypy
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" python -m pytest -q -n "${RELAX_TEST_WORKERS:-2}" "$@"
