#!/usr/bin/env bash
# Installs everything (scripts/setup.sh) then runs the test suite. Extra args go to pytest.
#   bash scripts/test.sh                 # default suite: tiny models, SQLite + PostgreSQL when reachable
#   bash scripts/test.sh -m slow         # real-model tests (SmolLM2-135M), minutes
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
