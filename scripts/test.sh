#!/usr/bin/env bash
# Set up .venv (CPU extra; skipped when .venv is current, see scripts/setup.sh --if-needed), lint (ruff),
# type-check (mypy, settings in pyproject.toml) and run the whole test suite, slow tests (real vLLM
# engine) included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --if-needed cpu
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-WARNING}"
echo "test: ruff"
.venv/bin/ruff check .
echo "test: mypy"
.venv/bin/mypy
echo "test: pytest (slow tests included)"
.venv/bin/python -m pytest -q -p no:cacheprovider --timeout 1800 --durations=15 "$@"
