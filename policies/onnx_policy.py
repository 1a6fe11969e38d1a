"""Pick an action for a query without SB3 or torch: the exported ONNX policy and its policy.json.

Imports only numpy, onnxruntime and the standard library (json, math, pathlib), besides the project's
numpy-only :mod:`policies.observation` (the observation encoder the env and PPO use) and :mod:`policies.gate`::

    from policies.onnx_policy import OnnxPolicy
    pol = OnnxPolicy("runs/<run>/export")          # folder with policy.json + policy.onnx
    action_id = pol.act(features, prompt_tokens, lambda_tokens=1e-4, lambda_seconds=0.05)

``features`` is the query's feature vector as stored in the cache (the featurizer's hidden state),
``prompt_tokens`` its prompt length; ``mask`` (optional, bool per menu entry) excludes actions.
Where the export carries a gate (``policy.json``'s ``gate``, see :mod:`policies.gate`) and it is
closed at (λ_T, λ_L), the policy plays the gate's static fallback instead of the network's choice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from policies.gate import Gate
from policies.observation import ObsEncoder
from rollouts.errors import TTCError

ort.disable_telemetry_events()  # no usage telemetry from policy loading (docs/reliability.md)


class OnnxPolicyError(TTCError):
    """An exported policy (policy.json / policy.onnx) is missing, malformed or unloadable."""


class OnnxPolicy:
    def __init__(self, path: str | Path):
        p = Path(path)
        jpath = p / "policy.json" if p.is_dir() else p
        if not jpath.is_file():
            raise OnnxPolicyError(f"{jpath}: policy.json not found")
        try:
            doc = json.loads(jpath.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise OnnxPolicyError(f"{jpath}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except json.JSONDecodeError as exc:
            raise OnnxPolicyError(f"{jpath}:{exc.lineno}: malformed JSON ({exc.msg})") from exc
        if not isinstance(doc, dict) or doc.get("format") != "ttc-alloc/onnx-policy":
            raise OnnxPolicyError(f"{jpath}: not a ttc-alloc ONNX policy")
        try:
            self._read(doc, jpath)
        except (KeyError, TypeError, ValueError) as exc:
            raise OnnxPolicyError(f"{jpath}: malformed policy.json ({type(exc).__name__}: {exc})") from exc

    def _read(self, doc: dict, jpath: Path) -> None:
        self.doc = doc
        self.menu: list[str] = list(doc["menu"])
        o = doc["observation"]
        if "clip" not in o:  # the export always writes it (from_dict's default is for a checkpoint's dict)
            raise KeyError("observation.clip")
        self.encoder = ObsEncoder.from_dict(o)
        self.gate = Gate.from_dict(doc["gate"]) if doc.get("gate") else None
        onnx_path = jpath.parent / doc["onnx"]
        if not onnx_path.is_file():
            raise OnnxPolicyError(f"{onnx_path}: ONNX model not found (named by {jpath})")
        try:
            self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail...)
            raise OnnxPolicyError(f"{onnx_path}: not a loadable ONNX model ({type(exc).__name__})") from exc

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim

    def observation(
        self, features, prompt_tokens, lambda_tokens: float = 0.0, lambda_seconds: float = 0.0
    ) -> np.ndarray:
        f = np.atleast_2d(np.asarray(features, dtype=np.float64))
        pt = np.atleast_1d(np.asarray(prompt_tokens, dtype=np.float64))
        if f.shape[1] != self.feature_dim:
            raise OnnxPolicyError(f"features have length {f.shape[1]}, the policy expects {self.feature_dim}")
        for name, lam in (("lambda_tokens", lambda_tokens), ("lambda_seconds", lambda_seconds)):
            if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
                raise OnnxPolicyError(f"{name} must be a finite number >= 0, got {lam!r}")
        return self.encoder.encode(f, pt, lambda_tokens, lambda_seconds)

    def act_index(
        self, features, prompt_tokens, lambda_tokens=0.0, lambda_seconds=0.0, mask=None, use_gate=True
    ) -> np.ndarray:
        """Action indices; ``use_gate=False`` asks the network even where the gate is closed."""
        obs = self.observation(features, prompt_tokens, lambda_tokens, lambda_seconds)
        m = (
            np.ones((len(obs), len(self.menu)), dtype=bool)
            if mask is None
            else np.atleast_2d(np.asarray(mask, dtype=bool))
        )
        if m.shape[1] != len(self.menu):
            raise OnnxPolicyError(f"mask has {m.shape[1]} entries, the menu has {len(self.menu)}")
        if not m.any(axis=1).all():
            raise OnnxPolicyError("mask allows no action")
        m = np.broadcast_to(m, (len(obs), m.shape[1]))
        if use_gate and self.gate is not None and not self.gate.is_open(lambda_tokens, lambda_seconds):
            return self.gate.fallback.choose(m, lambda_tokens, lambda_seconds)
        _, action = self.session.run(["logits", "action"], {"obs": obs, "mask": m.copy()})
        return action

    def act(self, features, prompt_tokens, lambda_tokens=0.0, lambda_seconds=0.0, mask=None) -> str:
        """The chosen action id for one query."""
        return self.menu[int(self.act_index(features, prompt_tokens, lambda_tokens, lambda_seconds, mask)[0])]
