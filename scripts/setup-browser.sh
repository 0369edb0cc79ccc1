#!/usr/bin/env bash
# Installs what the browser tests (pytest -m browser) need: Debian's Chromium and chromedriver, and the Python
# playwright package in .venv. Playwright drives the apt binary (executable_path); it never downloads a browser,
# so `playwright install` is never run. Idempotent: a second run only re-checks.
#   bash scripts/setup-browser.sh && bash scripts/test.sh -m browser
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
fi
bash scripts/setup.sh
if ! .venv/bin/python -c "import playwright" 2>/dev/null; then
  PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/pip install -q -c constraints.txt "playwright>=1.50,<2"   # = the [browser] extra
fi
echo "browser: $(chromium --version 2>/dev/null | head -1); playwright $(.venv/bin/python -c \
  'import importlib.metadata as m; print(m.version("playwright"))')"
