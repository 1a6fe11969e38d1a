#!/usr/bin/env bash
# Set up .venv (CPU extra), lint (ruff), type-check (mypy, settings in pyproject.toml) and run the whole
# test suite, slow tests (real vLLM engine) included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh cpu
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-WARNING}"
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider --timeout 1800 "$@"
