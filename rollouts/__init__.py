"""Rollout collection, caches and their readers.

Importing the package switches usage statistics and telemetry off unless the user set them: vLLM's
usage reports (``VLLM_NO_USAGE_STATS``, ``DO_NOT_TRACK``); every entry point imports this package
before vLLM. onnxruntime's telemetry is switched off where a session is made (policies/onnx_policy.py).
"""

import os

os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
