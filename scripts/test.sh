#!/usr/bin/env bash
# Set up everything, then lint (ruff), type-check (mypy) and run the whole test suite
# (unit, Flower integration, deployment). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff (lint and format check)"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy (flexmoe_core, server_app, client_app)"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
