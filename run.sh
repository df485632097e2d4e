#!/usr/bin/env bash
# Set up (once) and run the main job: the quickstart recipe, a relaxed SEGNN on charged N-body systems.
# Usage: ./run.sh [KEY=VALUE ...]   e.g. ./run.sh trainer.epochs=5
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh
ensure_venv .venv dev
relax train relaxcli/recipes/nbody_relaxed.yaml "$@"
