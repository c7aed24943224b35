#!/usr/bin/env bash
# Set up everything, then run the main job: FLEX-MoE vs greedy on Fashion-MNIST in Flower's
# simulation engine; prints a result table and writes results/main/ (JSON, CSV, PNG plots).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m flexmoe_bench.experiment "$@"
