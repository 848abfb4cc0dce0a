# Sourced by run.sh and test.sh: create/activate .venv; install torch==2.13.0 first when no torch
# is present (the CPU wheel; an unpinned torch would pull GBs of CUDA packages).
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
fi
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q torch==2.13.0
fi

# install_project EXTRAS: `pip install -e ".[EXTRAS]"`, skipped when pyproject.toml and the
# extras are unchanged since the last successful install (a rerun then starts at once).
install_project() {
  local stamp=".venv/.difflens-install-$1"
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
      || ! python -c "import difflens" >/dev/null 2>&1; then
    python -m pip install -q -e ".[$1]"
    echo "$want" > "$stamp"
  fi
}
