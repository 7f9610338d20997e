#!/usr/bin/env bash
# Set up this checkout with every extra plus dev tools, then lint, type-check and
# test, stopping at the first failure.
#   bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==== %s ====\n' "$*"; }

section "setup"
bash scripts/setup.sh all,dev
section "ruff check"
.venv/bin/ruff check .
section "ruff format --check"
.venv/bin/ruff format --check .
section "mypy"
.venv/bin/mypy broker edge_node gateway wearables edgecollab benchmarks
section "pytest"
.venv/bin/pytest "$@"
