#!/usr/bin/env bash
# Set up this checkout with every extra plus dev tools, then lint, type-check and
# test, stopping at the first failure.
#   bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==== %s ====\n' "$*"; }

section "setup"
bash scripts/setup.sh all,dev
# The dashboard is tested in a real headless browser: Debian's chromium, driven by
# Playwright's Python package (which never downloads a browser of its own).
if command -v chromium >/dev/null 2>&1; then
    echo "chromium: $(command -v chromium)"
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the dashboard's browser test"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium fonts-liberation >/dev/null
else
    echo "chromium is missing, so the dashboard's browser test will be skipped; install it with:"
    echo "    sudo apt-get update && sudo apt-get install -y chromium fonts-liberation"
fi
section "ruff check"
.venv/bin/ruff check .
section "ruff format --check"
.venv/bin/ruff format --check .
section "mypy"
.venv/bin/mypy broker edge_node gateway wearables edgecollab benchmarks
section "pytest"
.venv/bin/pytest "$@"
