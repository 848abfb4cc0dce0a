#!/usr/bin/env bash
# One command from a fresh checkout to an ADL report on the embedded default:
# makes .venv, installs torch==2.13.0 first when no torch is present (the CPU wheel; an
# unpinned torch would pull GBs of CUDA packages), then difflens, then runs `difflens adl`.
# Extra arguments go to `difflens adl` (e.g. --finetuned PATH --base PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q torch==2.13.0
fi
python -m pip install -q -e ".[report,embeddings,llm,mining]"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec difflens adl "$@"
