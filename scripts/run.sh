#!/usr/bin/env bash
# One command from a fresh checkout to an ADL report on the embedded default:
# makes .venv, installs torch==2.13.0 first when no torch is present (the CPU wheel; an
# unpinned torch would pull GBs of CUDA packages), then difflens, then runs `difflens adl`.
# Extra arguments go to `difflens adl` (e.g. --finetuned PATH --base PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
install_project report,embeddings,llm,mining
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec difflens adl "$@"
