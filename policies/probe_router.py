"""The seed paper's router, reproduced (Huang et al., arXiv 2509.09864, "Latency and Token-Aware
Test-Time Compute"): a calibrated MLP probe predicts each config's success from the query's hidden-state
features and the config's features, then the router takes

    argmax_a  p̂(success | query, a) − λ_T · mean_tokens(a) − λ_L · mean_seconds(a)

with the costs averaged per config on the TRAIN split (the paper's per-config average costs).

Probe: an MLP trunk over the query's ``[standardised features, log1p(prompt_tokens)]`` read out
bilinearly by the config features (one-hot action, pool/search flags, log2 budget, selector one-hot):
``logit = <trunk(q), W c_a> + v . c_a`` (so every config has its own head and bias), trained
with binary cross-entropy on the TRAIN split against the table's expected correctness (a soft label:
the success probability of that budget), Adam with weight decay, early stopping on the VALIDATION
split's loss. Calibration: Platt scaling ``p̂ = sigmoid(a · logit + b)`` fitted on the validation split
(BCE, soft labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from env.outcomes import OutcomeTable
from policies.base import AllocationPolicy

SELECTOR_ORDER = ("majority", "best_score", "weighted")


def action_features(table: OutcomeTable) -> np.ndarray:
    """(A, F) features of each action: one-hot, strategy flags, log2 budget (scaled), selector one-hot."""
    a_n = table.n_actions
    max_n = max(a.n for a in table.menu)
    rows = []
    for i, a in enumerate(table.menu):
        onehot = np.zeros(a_n)
        onehot[i] = 1.0
        sel = [1.0 if a.selector == s else 0.0 for s in SELECTOR_ORDER]
        rows.append(
            np.concatenate(
                [
                    onehot,
                    [1.0 if a.is_pool else 0.0, 0.0 if a.is_pool else 1.0],
                    [math.log2(a.n) / max(math.log2(max_n), 1.0) if a.is_pool else 0.0],
                    sel,
                ]
            )
        )
    return np.array(rows, dtype=np.float32)


@dataclass
class ProbeConfig:
    hidden: int = 64
    epochs: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-3
    patience: int = 40
    seed: int = 0


class _Probe(nn.Module):
    """logit(q, a) = <h(q), W c_a> + v . c_a: a query trunk and a bilinear read-out by config features
    (c_a includes the action one-hot, so each config has its own head and bias, as per-config probes)."""

    def __init__(self, d_query: int, d_action: int, hidden: int):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_query, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(d_action, hidden)
        self.bias = nn.Linear(d_action, 1)

    def forward(self, xq, xc):
        return (self.trunk(xq) * self.head(xc)).sum(-1) + self.bias(xc).squeeze(-1)


class ProbeRouter(AllocationPolicy):
    """Fit with :meth:`fit` (train rows, validation rows), then ``choose`` like any policy."""

    name = "probe_router"

    def __init__(self, config: ProbeConfig | None = None):
        self.config = config or ProbeConfig()
        self.model: _Probe | None = None
        self.platt = (1.0, 0.0)

    # -- data ----------------------------------------------------------------------------------
    def _base(self, table: OutcomeTable, rows: np.ndarray) -> np.ndarray:
        x = np.concatenate(
            [table.features[rows], np.log1p(table.prompt_tokens[rows])[:, None].astype(np.float64)], axis=1
        )
        return ((x - self.mean) / self.std).astype(np.float32)

    def _pairs(self, table: OutcomeTable, rows: np.ndarray):
        base = self._base(table, rows)  # (R, D+1)
        r_n, a_n = len(rows), table.n_actions
        xq = np.repeat(base, a_n, axis=0)
        xc = np.tile(self.action_feats, (r_n, 1))
        y = table.correct[rows].reshape(-1).astype(np.float32)
        m = table.mask[rows].reshape(-1)
        return (torch.from_numpy(xq), torch.from_numpy(xc)), torch.from_numpy(y), torch.from_numpy(m)

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, table: OutcomeTable, train_rows: np.ndarray, val_rows: np.ndarray) -> ProbeRouter:
        config = self.config
        train_rows, val_rows = np.asarray(train_rows), np.asarray(val_rows)
        x = np.concatenate(
            [table.features[train_rows], np.log1p(table.prompt_tokens[train_rows])[:, None]], axis=1
        )
        self.mean = x.mean(axis=0)
        self.std = np.where(x.std(axis=0) > 1e-8, x.std(axis=0), 1.0)
        self.action_feats = action_features(table)
        self.action_ids = list(table.action_ids)
        mt, ms = table.mean_costs(train_rows)
        # a config never seen on train cannot be costed: it is never chosen
        self.mean_tokens = mt
        self.mean_seconds = ms
        gen = torch.Generator().manual_seed(config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = _Probe(x.shape[1], self.action_feats.shape[1], config.hidden)
        (xtq, xtc), yt, mask_t = self._pairs(table, train_rows)
        xtq, xtc, yt = xtq[mask_t], xtc[mask_t], yt[mask_t]
        has_val = len(val_rows) > 0
        if has_val:
            (xvq, xvc), yv, mask_v = self._pairs(table, val_rows)
            xvq, xvc, yv = xvq[mask_v], xvc[mask_v], yv[mask_v]
        opt = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        loss_fn = nn.BCEWithLogitsLoss()
        best, best_state, bad = math.inf, None, 0
        batch = 512
        for _ in range(config.epochs):
            self.model.train()
            perm = torch.randperm(len(yt), generator=gen)
            for lo in range(0, len(yt), batch):
                idx = perm[lo : lo + batch]
                opt.zero_grad()
                loss = loss_fn(self.model(xtq[idx], xtc[idx]), yt[idx])
                loss.backward()
                opt.step()
            if has_val:
                self.model.eval()
                with torch.no_grad():
                    vl = float(loss_fn(self.model(xvq, xvc), yv))
                if vl < best - 1e-5:
                    best, bad = vl, 0
                    best_state = {k: v.clone() for k, v in self.model.state_dict().items()}
                else:
                    bad += 1
                    if bad >= config.patience:
                        break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        if has_val:
            with torch.no_grad():
                self.platt = _fit_platt(self.model(xvq, xvc).numpy(), yv.numpy())
        return self

    # -- inference -----------------------------------------------------------------------------
    def predict_success(self, table: OutcomeTable, rows: np.ndarray) -> np.ndarray:
        """Calibrated p̂ (R, A)."""
        if self.model is None:
            raise RuntimeError("ProbeRouter.fit() first")
        if list(table.action_ids) != self.action_ids:
            raise ValueError("the probe was fitted on another action menu")
        (xq, xc), _, _ = self._pairs(table, np.asarray(rows))
        with torch.no_grad():
            logit = self.model(xq, xc).numpy().astype(np.float64)
        a, b = self.platt
        p = 1.0 / (1.0 + np.exp(-(a * logit + b)))
        return p.reshape(len(rows), table.n_actions)

    def choose(self, table: OutcomeTable, rows, lambda_tokens, lambda_seconds):
        rows = np.asarray(rows)
        p = self.predict_success(table, rows)
        score = p - lambda_tokens * self.mean_tokens[None, :] - lambda_seconds * self.mean_seconds[None, :]
        legal = table.mask[rows] & np.isfinite(score)
        # a row whose legal actions were never costed on train falls back to any legal action
        legal = np.where(legal.any(axis=1, keepdims=True), legal, table.mask[rows])
        score = np.where(legal, np.nan_to_num(score, nan=-1e9), -np.inf)
        return np.argmax(score, axis=1)


def _fit_platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling: minimise BCE of sigmoid(a*z + b) against soft labels y."""
    from scipy.optimize import minimize

    z = logits.astype(np.float64)
    y = y.astype(np.float64)

    def f(w):
        s = w[0] * z + w[1]
        # BCE with logits, stable
        loss = np.mean(np.maximum(s, 0) - s * y + np.log1p(np.exp(-np.abs(s))))
        p = 1 / (1 + np.exp(-s))
        g = p - y
        return loss, np.array([np.mean(g * z), np.mean(g)])

    res = minimize(f, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = (float(v) for v in res.x)
    if not (math.isfinite(a) and math.isfinite(b)):
        return (1.0, 0.0)
    return (a, b)
