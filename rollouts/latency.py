"""Latency accounting: what a record's ``seconds`` means, and a model for budgets not run alone.

Definition: a record's latency is the wall-clock seconds one query sees when its strategy runs alone
on the engine (no other query batched with it), from the first request to the final answer, scorer
calls included. Collection batches many queries for throughput, so most records carry a *modelled*
latency; a calibration pass runs a sample of queries alone, stores those direct measurements, fits
this model on them and reports its error.

Model: one engine call (a "round") with prompt length ``p``, ``w`` parallel sequences and a longest
generation of ``L`` tokens costs ``a + b*p*w + L*(c + d*w)`` seconds (fixed overhead, prefill,
decode steps whose cost grows with the batch width). A strategy with several rounds (beam search)
costs the sum of its rounds plus its scorer calls. Coefficients are fitted by non-negative least
squares, so every term stays physically meaningful.

A user-supplied model for an API (``FORM_API``, ``api:a=..,b=..,c=..``): one call costs
``a + b*p + c*L`` seconds (the provider's overhead, prompt rate and per-token generation rate), and
the parallel samples of a call are one round whatever their number (the API runs them side by side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FORM = "a + b*prompt_tokens*width + max_gen_tokens*(c + d*width)"
FORM_API = "a + b*prompt_tokens + c*max_gen_tokens"
FORMS = (FORM, FORM_API)


@dataclass(frozen=True)
class Round:
    """One engine call as the latency model sees it."""

    prompt_tokens: int
    width: int
    max_gen_tokens: int


def _row(r: Round, form: str = FORM) -> list[float]:
    if form == FORM_API:
        return [1.0, r.prompt_tokens, r.max_gen_tokens]
    return [1.0, r.prompt_tokens * r.width, r.max_gen_tokens, r.max_gen_tokens * r.width]


@dataclass
class LatencyModel:
    coef: list[float]
    fit: dict[str, Any] = field(default_factory=dict)
    form: str = FORM

    def round_seconds(self, r: Round) -> float:
        return float(np.dot(self.coef, _row(r, self.form)))

    def predict(self, rounds: Sequence[Round], extra_seconds: float = 0.0) -> float:
        """Seconds of a strategy made of these rounds run one after another."""
        return float(sum(self.round_seconds(r) for r in rounds) + extra_seconds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyModel:
        form = d.get("form", FORM)
        if form not in FORMS:
            raise ValueError(f"latency model form {form!r} is not one of {FORMS}")
        coef = [float(c) for c in d["coef"]]
        if len(coef) != len(_row(Round(0, 1, 0), form)):
            raise ValueError(f"latency model form {form!r} needs {len(_row(Round(0, 1, 0), form))} coefficients, "
                             f"got {len(coef)}")
        return cls(coef=coef, fit=dict(d.get("fit", {})), form=form)

    @classmethod
    def parse_api(cls, spec: str) -> LatencyModel:
        """``api:a=0.4,b=1e-4,c=0.012`` (seconds, seconds per prompt token, per generated token)."""
        body = spec.removeprefix("api:")
        vals: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in body.split(","))):
            key, sep, val = part.partition("=")
            if not sep or key.strip() not in ("a", "b", "c"):
                raise ValueError(f"latency model {spec!r}: expected api:a=SECONDS,b=S_PER_PROMPT_TOKEN,"
                                 f"c=S_PER_GENERATED_TOKEN, got {part!r}")
            try:
                vals[key.strip()] = float(val)
            except ValueError:
                raise ValueError(f"latency model {spec!r}: {key.strip()}={val!r} is not a number") from None
        if any(not np.isfinite(v) or v < 0 for v in vals.values()):
            raise ValueError(f"latency model {spec!r}: coefficients must be finite and >= 0")
        coef = [vals.get(k, 0.0) for k in ("a", "b", "c")]
        label = "user:api(" + ",".join(f"{k}={v:g}" for k, v in zip("abc", coef, strict=True)) + ")"
        return cls(coef=coef, form=FORM_API, fit={"label": label, "user_supplied": True})

    @classmethod
    def fit_measurements(cls, samples: Sequence[tuple[Sequence[Round], float]]) -> LatencyModel:
        """Fit on (rounds, measured seconds) pairs; report in-sample error (MAPE, max abs error)."""
        from scipy.optimize import nnls

        if len(samples) < 4:
            raise ValueError(f"need at least 4 latency measurements to fit, got {len(samples)}")
        X = np.array([np.sum([_row(r) for r in rounds], axis=0) for rounds, _ in samples], dtype=float)
        y = np.array([s for _, s in samples], dtype=float)
        # Relative-error weighting: short and long calls matter alike.
        w = 1.0 / np.maximum(y, 1e-3)
        coef, _ = nnls(X * w[:, None], y * w)
        model = cls(coef=[float(c) for c in coef])
        pred = X @ coef
        model.fit = error_report(pred, y)
        return model


def error_report(pred: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    rel = np.abs(pred - actual) / np.maximum(actual, 1e-9)
    return {
        "n": int(len(actual)),
        "mape": float(rel.mean()),
        "median_ape": float(np.median(rel)),
        "max_abs_error_s": float(np.abs(pred - actual).max()),
        "mean_actual_s": float(actual.mean()),
    }
