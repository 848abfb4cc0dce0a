#!/usr/bin/env bash
# Install the test dependencies (torch==2.13.0 first when absent) into .venv and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
install_project dev
# The report's screenshot test and tests/test_serve.py (through Playwright, from the dev extra,
# with executable_path=/usr/bin/chromium: no browser download) need headless Chromium (Debian
# package); install it when we can.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
    >/dev/null 2>&1 || echo "note: chromium could not be installed; the screenshot test skips"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ruff check src tests benchmarks
python -m pytest -q "$@"
