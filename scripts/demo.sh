#!/usr/bin/env bash
# Set up this checkout (Python venv, Mosquitto, every role's dependencies) and run
# the local demo: broker, edge nodes, gateway and sensors in one command.
#   bash scripts/demo.sh [options of `edgecollab up`]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
exec .venv/bin/edgecollab up "$@"
