# Sourced by run.sh and test.sh: create/activate .venv; install torch==2.13.0 first when no torch
# is present (the CPU wheel; an unpinned torch would pull GBs of CUDA packages).
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q torch==2.13.0
fi
