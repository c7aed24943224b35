#!/usr/bin/env bash
# Set up everything, then run the whole test suite (unit, Flower integration, deployment).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
