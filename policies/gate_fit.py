"""Fitting the gate of :mod:`policies.gate`: the evidence (cross-fitted or held-out paired gains),
the utility actor's shrinkage α, and :class:`GatedPolicy` (any policy behind a gate, for evaluation).

Kept apart from :mod:`policies.gate` so that module loads with numpy alone (the ONNX loader uses it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from env.outcomes import OutcomeTable
from policies.base import AllocationPolicy
from policies.gate import Gate, LambdaRegions, StaticFallback, fit_gate


class GatedPolicy(AllocationPolicy):
    """Any policy behind a gate: its choice where the gate is open at this λ, else the fallback."""

    def __init__(self, policy: AllocationPolicy, gate: Gate, name: str | None = None):
        self.policy, self.gate = policy, gate
        self.name = name or f"{policy.name}_gated"

    def choose(self, table: OutcomeTable, rows, lambda_tokens, lambda_seconds):
        rows = np.asarray(rows)
        mask = table.mask[rows]
        if not self.gate.is_open(lambda_tokens, lambda_seconds):
            return self.gate.fallback.choose(mask, lambda_tokens, lambda_seconds)
        return np.asarray(self.policy.choose(table, rows, lambda_tokens, lambda_seconds), dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Evidence


def folds_of(n: int, k: int, seed: int = 0) -> np.ndarray:
    """A fold index in [0, k) per item, balanced and seeded."""
    return np.random.default_rng(seed).permutation(np.arange(n) % k)


def paired_gains(
    table: OutcomeTable, rows: np.ndarray, routed: np.ndarray, fallback: np.ndarray, lt: float, ls: float
) -> np.ndarray:
    """Per query U(routed) − U(fallback) at (λ_T, λ_L)."""
    u = table.utility(lt, ls)[np.asarray(rows)]
    idx = np.arange(len(rows))
    return u[idx, routed] - u[idx, fallback]


def _priced_choice(
    mask: np.ndarray, score: np.ndarray, mean_t: np.ndarray, mean_s: np.ndarray, lt: float, ls: float
) -> np.ndarray:
    """argmax over legal actions of score − λ_T·T̄ − λ_L·S̄ (the utility actor's deterministic choice;
    the β and normalisation factors are positive and do not move the argmax)."""
    u = score - lt * np.nan_to_num(mean_t, nan=0.0) - ls * np.nan_to_num(mean_s, nan=0.0)  # (A,) or (R, A)
    return np.argmax(np.where(mask, u, -np.inf), axis=1)


@dataclass
class CrossFit:
    """Out-of-fold material of the utility actor over train + validation rows."""

    rows: np.ndarray
    fold: np.ndarray
    prior: np.ndarray  # (R, A) c̄ of the fold's fitting rows
    gain: np.ndarray  # (R, A) out-of-fold δ(q)
    mean_tokens: np.ndarray  # (R, A)
    mean_seconds: np.ndarray  # (R, A)
    alpha: float


def crossfit_utility(
    table: OutcomeTable,
    encoder,
    rows: np.ndarray,
    env_cfg: dict[str, Any],
    ppo_cfg: dict[str, Any],
    k: int = 5,
    seed: int = 0,
) -> CrossFit:
    """Refit the utility actor's gain head (its warm start) K times, each on all folds but one
    (early stopping on the next fold), and predict the held-out fold. α: the least-squares coefficient
    of the held-out residual correctness on the held-out δ, clipped to [0, 1]."""
    import torch

    from policies.utility_head import UtilityExtractor, utility_spec, warm_start_gain

    rows = np.asarray(rows)
    k = max(3, min(int(k), len(rows)))  # fit, stop and held-out folds are all needed
    fold = folds_of(len(rows), k, seed)
    a_n = table.n_actions
    prior = np.zeros((len(rows), a_n))
    gain = np.zeros((len(rows), a_n))
    mean_t = np.zeros((len(rows), a_n))
    mean_s = np.zeros((len(rows), a_n))
    act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[ppo_cfg.get("activation", "tanh")]
    for f in range(k):
        held = fold == f
        stop = fold == (f + 1) % k
        fit = ~held & ~stop
        spec = utility_spec(
            table, rows[fit], encoder, env_cfg, float(ppo_cfg.get("utility_beta", 20.0)),
            int(ppo_cfg.get("utility_rank", 0)), ensemble=int(ppo_cfg.get("utility_ensemble", 1)),
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + f)
            ext = UtilityExtractor(encoder.dim, a_n, spec, list(ppo_cfg.get("net_arch", [64, 64])), act)
        ext.reset_gain()
        warm_start_gain(_Holder(ext), table, encoder, rows[fit], rows[stop], seed=seed * 1000 + f)
        x = torch.as_tensor(encoder.encode_base(table.features[rows[held]], table.prompt_tokens[rows[held]]))
        with torch.no_grad():
            gain[held] = ext.gain_net(x).numpy().astype(np.float64)
        prior[held] = np.asarray(spec["prior_correct"])[None, :]
        mean_t[held] = np.asarray(spec["mean_tokens"])[None, :]
        mean_s[held] = np.asarray(spec["mean_seconds"])[None, :]
    m = table.mask[rows]
    resid = np.where(m, table.correct[rows] - prior, 0.0)
    g = np.where(m, gain, 0.0)
    denom = float((g * g).sum())
    alpha = float(np.clip((g * resid).sum() / denom, 0.0, 1.0)) if denom > 0 else 0.0
    return CrossFit(rows, fold, prior, gain, mean_t, mean_s, alpha)


class _Holder:
    """What :func:`policies.utility_head.warm_start_gain` reads of a policy: its extractor."""

    def __init__(self, ext):
        self.mlp_extractor = ext


def crossfit_gains(table: OutcomeTable, cf: CrossFit, alpha: float | None = None):
    """``gains(λ_T, λ_L)`` for :func:`fit_gate`: out-of-fold routed (c̄ + α·δ) vs out-of-fold fallback
    (the fitting folds' best static, α = 0)."""
    a = cf.alpha if alpha is None else float(alpha)
    mask = table.mask[cf.rows]

    def gains(lt: float, ls: float) -> np.ndarray:
        routed = np.zeros(len(cf.rows), dtype=np.int64)
        fb = np.zeros(len(cf.rows), dtype=np.int64)
        for f in np.unique(cf.fold):
            h = cf.fold == f
            routed[h] = _priced_choice(
                mask[h], cf.prior[h] + a * cf.gain[h], cf.mean_tokens[h], cf.mean_seconds[h], lt, ls
            )
            fb[h] = _priced_choice(mask[h], cf.prior[h], cf.mean_tokens[h], cf.mean_seconds[h], lt, ls)
        return paired_gains(table, cf.rows, routed, fb, lt, ls)

    return gains


def crossfit_router_gains(
    table: OutcomeTable, rows: np.ndarray, k: int = 5, seed: int = 0
) -> Callable[[float, float], np.ndarray]:
    """The same evidence for the seed paper's probe router: refitted K times (probe on all folds but
    two, Platt scaling on one), routing the held-out fold against the fitting folds' best static."""
    from policies.baselines import TrainBestStaticPolicy
    from policies.probe_router import ProbeConfig, ProbeRouter

    rows = np.asarray(rows)
    k = max(3, min(int(k), len(rows)))
    fold = folds_of(len(rows), k, seed + 1)
    routers, statics = [], []
    for f in range(k):
        stop = fold == (f + 1) % k
        fit = (fold != f) & ~stop
        routers.append(ProbeRouter(ProbeConfig(seed=seed)).fit(table, rows[fit], rows[stop]))
        statics.append(TrainBestStaticPolicy(rows[fold != f]))

    def gains(lt: float, ls: float) -> np.ndarray:
        out = np.zeros(len(rows))
        for f in range(k):
            h = rows[fold == f]
            out[fold == f] = paired_gains(
                table, h, routers[f].choose(table, h, lt, ls), statics[f].choose(table, h, lt, ls), lt, ls
            )
        return out

    return gains


def holdout_gains(
    policy: AllocationPolicy, table: OutcomeTable, train_rows: np.ndarray, val_rows: np.ndarray
) -> Callable[[float, float], np.ndarray]:
    """Evidence for a policy that cannot be refitted cheaply: its choices on the validation split
    against the train-picked static (validation was only used to pick its checkpoint)."""
    from policies.baselines import TrainBestStaticPolicy

    static = TrainBestStaticPolicy(train_rows)
    val_rows = np.asarray(val_rows)

    def gains(lt: float, ls: float) -> np.ndarray:
        return paired_gains(
            table,
            val_rows,
            policy.choose(table, val_rows, lt, ls),
            static.choose(table, val_rows, lt, ls),
            lt,
            ls,
        )

    return gains


# ----------------------------------------------------------------------------------------------
# The utility actor: shrinkage and the whole fit


def shrink_gain(model, alpha: float) -> None:
    """Scale the utility actor's per-query gain δ by α, in place (its last layers are linear)."""
    import torch

    ext = model.policy.mlp_extractor
    with torch.no_grad():
        for member in ext.gain_net.members:
            member[-1].weight.mul_(alpha)
            member[-1].bias.mul_(alpha)


def fit_run_gate(
    model,
    table: OutcomeTable,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    ppo_cfg: dict[str, Any],
    grid_n: int = 5,
    confidence: float = 0.9,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
) -> Gate:
    """The gate of a trained run: fallback on train + validation, regions = the evaluation grid
    (``policies.base.lambda_grid`` on the train split, as ``evaluate.py`` builds it), evidence
    cross-fitted for the utility actor (refitted with the run's ``ppo_cfg``; with its shrinkage α;
    checked against the shipped policy's own validation gains), held-out validation otherwise. The model itself is not changed (see :func:`shrink_gain`)."""
    from policies.base import lambda_grid
    from policies.observation import ObsEncoder
    from policies.ppo import PPOPolicy

    meta = model.ttc_meta
    both = np.concatenate([np.asarray(train_rows), np.asarray(val_rows)])
    fallback = StaticFallback.fit(table, both)
    grid = lambda_grid(table, np.asarray(train_rows), grid_n)
    regions = LambdaRegions(grid["lambda_tokens"], grid["lambda_seconds"])
    if hasattr(model.policy.mlp_extractor, "gain_net"):
        encoder = ObsEncoder.from_dict(meta["encoder"])
        cf = crossfit_utility(table, encoder, both, meta["env"], ppo_cfg, k=folds, seed=seed)
        shipped = copy.deepcopy(model)
        shrink_gain(shipped, cf.alpha)
        check = holdout_gains(PPOPolicy(shipped), table, train_rows, val_rows)
        return fit_gate(
            fallback, regions, crossfit_gains(table, cf), confidence, n_boot, seed, shrinkage=cf.alpha,
            check=check,
        )  # fmt: skip
    gains = holdout_gains(PPOPolicy(model), table, train_rows, val_rows)
    return fit_gate(fallback, regions, gains, confidence, n_boot, seed, method="validation")


def run_gate(run_dir, model, table: OutcomeTable, train_rows, val_rows, run_cfg: dict[str, Any]) -> Gate:
    """The run's ``gate.json`` (written by ``train.py``), or the same gate fitted now for a run made
    before gates existed or with ``gate: false`` (so the gated policy can always be reported); with
    no model to refit (``model=None``, an ONNX export without a gate) a gate open everywhere
    (``method: none``)."""
    import json
    from pathlib import Path

    from policies.ppo import PPOConfig

    path = Path(run_dir) / "gate.json"
    if path.is_file():
        return Gate.from_dict(json.loads(path.read_text()))
    if model is None:  # an export made without a gate, and no gate.json: nothing to fit it on
        both = np.concatenate([np.asarray(train_rows), np.asarray(val_rows)])
        from policies.base import lambda_grid

        grid = lambda_grid(table, np.asarray(train_rows))
        regions = LambdaRegions(grid["lambda_tokens"], grid["lambda_seconds"])
        shape = (len(regions.lambda_tokens), len(regions.lambda_seconds))
        return Gate(StaticFallback.fit(table, both), regions, np.ones(shape, dtype=bool), method="none")
    ppo_cfg = PPOConfig.from_dict(run_cfg.get("ppo") or {}).to_dict()
    return fit_run_gate(
        model, table, train_rows, val_rows, ppo_cfg,
        confidence=float(run_cfg.get("gate_confidence", 0.9)), folds=int(run_cfg.get("gate_folds", 5)),
        seed=int(run_cfg.get("seed", 0)),
    )  # fmt: skip


def fit_and_record_run_gate(job: Any, model: Any, best: Any, summary: dict[str, Any]) -> Gate:
    """A training job's (``policies.training.TrainingJob``) gate for best_model.zip: gate.json, its
    ttc/gate/ scalars at the last step and its train_summary entry."""
    import json
    import time

    from policies.callbacks import write_tb_scalars
    from rollouts.atomic import write_text_atomic
    from rollouts.console import phase

    cfg = job.cfg
    t_gate = time.time()
    with phase(f"fitting the gate ({cfg.gate_folds} cross-fitted folds over train + validation)"):
        gate = fit_run_gate(
            best, job.table, job.train_rows, job.val_rows, cfg.ppo,
            confidence=cfg.gate_confidence, folds=cfg.gate_folds, seed=cfg.seed,
        )  # fmt: skip
    write_text_atomic(job.run_dir / "gate.json", json.dumps(gate.to_dict(), indent=1) + "\n")
    scalars = {"ttc/gate/open_share": gate.open_share}
    if gate.shrinkage is not None:
        scalars["ttc/gate/shrinkage"] = gate.shrinkage
    write_tb_scalars(model.logger, scalars, model.num_timesteps)
    summary["gate"] = {
        "open_share": gate.open_share,
        "shrinkage": gate.shrinkage,
        "method": gate.method,
        "seconds": round(time.time() - t_gate, 2),
    }
    alpha = "none" if gate.shrinkage is None else f"{gate.shrinkage:.3g}"
    print(f"gate: open in {gate.open_share:.0%} of the λ regions, gain shrinkage α = {alpha}")
    return gate
