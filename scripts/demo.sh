#!/usr/bin/env bash
# Installs everything (scripts/setup.sh) then runs the end-to-end demo: real corpora -> owners train experts ->
# registry -> composition -> generation with per-request opt-out -> owner withdrawal with exact effect.
#   bash scripts/demo.sh                 # ~10-15 min on 2 CPU cores
#   bash scripts/demo.sh --tiny          # seconds, tiny config-built model (smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/expertmesh demo "$@"
