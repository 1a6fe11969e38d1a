"""Train the PPO allocation policy on a rollout cache.

    python train.py                                    # configs/train_default.yaml on data/default_cache
    python train.py --seed 3 --hyperparams ppo.learning_rate=1e-3 env.outcome=sampled total_timesteps=20000
    python train.py --name myrun --resume              # continue runs/myrun from its latest checkpoint

Config: the defaults of :class:`TrainConfig`, ``env.allocate_env.EnvConfig`` (``env:``) and
``policies.ppo.PPOConfig`` (``ppo:``), which ``configs/train_default.yaml`` (the default ``--config``)
restates, overridden by a YAML file (``--config``), then ``--cache``, ``--name``, ``--seed``,
``--total-timesteps`` and ``--hyperparams key=value ...`` (``key`` is ``section.field`` or a bare field
name of the top level, ``env`` or ``ppo``; values are parsed as YAML; rl-zoo's ``key:value`` spelling
still works, with a deprecation warning). Unknown keys are an error.

Run folder ``runs/<name>/`` (default name ``ttc-Allocate-v0__<exp>__<seed>__<unix time>``)::

    config.yml         the resolved config (λ ranges filled in), seed included
    args.yml           the parsed command-line arguments
    command.txt        the command line(s) (one per start/resume)
    splits.json        train/val/test query ids (hash split; features are standardised on train only)
    tb/PPO_1/          TensorBoard events: SB3's rollout/, train/, eval/, time/ plus ttc/ scalars
    checkpoints/       ppo_<steps>_steps.zip every checkpoint_freq steps
    best_model.zip     best validation utility (MaskableEvalCallback on the val split x a λ grid; the
                       first evaluation is at step 0, before any PPO update)
    best.json          the best validation reward so far and the step it was reached (kept across --resume)
    gate.json          the static fallback and gate of best_model.zip (policies/gate.py; ``gate: false`` skips it)
    final_model.zip    the model after the last step
    export/            policy.onnx + policy.json of best_model.zip (ONNX parity-checked against SB3);
                       ``python -m policies.export`` exports any other checkpoint
    train_summary.json wall time, steps/s, timesteps (and the warm start's MSEs, ``ppo.policy: utility``)

``--resume`` continues ``runs_dir/<--name>`` (a copied run resumes in the copy) from the latest
checkpoint with ``reset_num_timesteps=False`` into the same TensorBoard folder, so curves continue:
what a killed job logged after that checkpoint is purged (TensorBoard's ``purge_step``), and a torn
latest checkpoint is skipped with a warning for the previous one. ``args.yml`` keeps the original
arguments; each resume appends its command to ``command.txt``. Without ``--resume`` an existing run
folder is never touched. One job per run folder: a second one exits 2 naming the holder's pid (an
OS lock on ``runs_dir/.<name>.lock``, released when the job ends or dies).

Checkpoints (``*.zip``) are pickles: load only your own (see README, "Checkpoints are code").
Errors (bad cache, unknown key, bad λ, other action menu...) print one ``error: ...`` line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from env.allocate_env import EnvConfig, make_splits
from env.escalate_env import EscalateConfig, env_config_from
from rollouts.config import config_from_dict, key_lines, load_yaml_file, parse_override
from rollouts.errors import ConfigError, TTCError, report

if TYPE_CHECKING:
    from rollouts.locks import FolderLock

ENV_NAME = "ttc-Allocate-v0"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "train_default.yaml"


def _default_ppo() -> dict[str, Any]:
    from policies.ppo import PPOConfig  # imported when needed: `train.py --help` stays light

    return PPOConfig().to_dict()


@dataclass
class TrainConfig:
    """One training run; the defaults are the shipped defaults (``configs/train_default.yaml``)."""

    cache: str = "data/default_cache"
    name: str | None = None
    exp: str = "ppo"
    seed: int = 0
    total_timesteps: int = 60000
    n_envs: int = 8
    eval_freq: int = 5000  # env steps between validation evaluations
    checkpoint_freq: int = 10000  # env steps between checkpoints
    val_grid: int = 3  # validation λ grid: val_grid x val_grid points of the evaluation grid's range
    runs_dir: str = "runs"
    progress_bar: bool = True
    export: bool = True
    torch_threads: int = 1
    gate: bool = True  # fit the static fallback + gate (policies/gate.py) and ship it in the export
    gate_confidence: float = 0.9  # a λ region opens only if its held-out gain is > 0 at this confidence
    gate_folds: int = 5  # cross-fitting folds over train + validation
    # env.kind: escalate only: a one-shot run folder whose policy the step policy clones before PPO
    warm_start_from: str | None = None
    # the env (EnvConfig, or EscalateConfig with kind: escalate) and PPO settings, as plain mappings
    # (config.yml's env: and ppo:); validate() fills in the defaults of the keys a config leaves out
    env: dict[str, Any] = field(default_factory=lambda: EnvConfig().to_dict())
    ppo: dict[str, Any] = field(default_factory=_default_ppo)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, d)

    def validate(self) -> None:
        """Value checks (the field types are checked by :func:`rollouts.config.config_from_dict`)."""
        from policies.ppo import PPOConfig

        self.env = env_config_from(self.env).to_dict()
        self.ppo = PPOConfig.from_dict(self.ppo).to_dict()
        for name in (
            "seed",
            "total_timesteps",
            "n_envs",
            "eval_freq",
            "checkpoint_freq",
            "val_grid",
            "torch_threads",
            "gate_folds",
        ):
            v = getattr(self, name)
            if v < (0 if name == "seed" else 1):
                raise ConfigError(f"{name} must be an integer >= {0 if name == 'seed' else 1}, got {v!r}")
        c = self.gate_confidence
        if not 0.5 <= c < 1:
            raise ConfigError(f"gate_confidence must be a number in [0.5, 1), got {c!r}")
        if self.gate_folds < 3:
            raise ConfigError(f"gate_folds must be an integer >= 3, got {self.gate_folds!r}")
        if self.name is not None:
            check_name(self.name)
        for name in ("cache", "exp", "runs_dir"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ----------------------------------------------------------------------------------------------
# Config assembly


def check_name(name: Any) -> str:
    """A run name is one plain folder name: no path separators, not ``.`` or ``..``."""
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"name must be a folder name (no '/', not '..'), got {name!r}")
    return name


def apply_override(d: dict[str, Any], key: str, value: Any) -> str:
    """Set one ``--hyperparams`` item in the config mapping ``d``; returns the key it set (``section.field``
    for a bare env or ppo field)."""
    from policies.ppo import PPOConfig

    env_keys = {f.name for f in fields(EscalateConfig)}  # Allocate-v0's keys and the escalation ones
    ppo_keys = {f.name for f in fields(PPOConfig)}
    top_keys = {f.name for f in fields(TrainConfig)}
    if "." in key:
        section, sub = key.split(".", 1)
        if section not in ("env", "ppo"):
            raise ConfigError(f"unknown config key {key!r} (sections: env, ppo)")
        if sub not in (env_keys if section == "env" else ppo_keys):
            raise ConfigError(f"unknown config key {key!r}")
        d.setdefault(section, {})
        d[section][sub] = value
        return key
    if key in top_keys and key not in ("env", "ppo"):
        d[key] = value
        return key
    for section, keys in (("ppo", ppo_keys), ("env", env_keys)):
        if key in keys:
            d.setdefault(section, {})[key] = value
            return f"{section}.{key}"
    raise ConfigError(f"unknown config key {key!r}")


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The run's config: ``--config`` (YAML over the defaults), then the flags, then ``--hyperparams``.
    An error about a key the file sets (and the command line did not override) names the file's line."""
    d = load_yaml_file(args.config) if args.config else {}
    lines = key_lines(args.config) if args.config else {}
    flags = {"cache": args.cache, "name": args.name, "seed": args.seed, "total_timesteps": args.total_timesteps,
             "progress_bar": False if args.no_progress else None, "runs_dir": args.runs_dir or None}  # fmt: skip
    for key, v in flags.items():
        if v is not None:
            d[key] = v
            lines.pop(key, None)
    for item in args.hyperparams or []:
        lines.pop(apply_override(d, *parse_override(item, legacy_colon=True)), None)
    return config_from_dict(TrainConfig, d, path=args.config, lines=lines)


def default_name(cfg: TrainConfig) -> str:
    env_name = "ttc-Escalate-v0" if cfg.env.get("kind") == "escalate" else ENV_NAME
    return f"{env_name}__{cfg.exp}__{cfg.seed}__{int(time.time())}"


# ----------------------------------------------------------------------------------------------
# Training


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint's path (``--resume`` falls back to older ones if it does not load)."""
    from policies.resume import checkpoints

    cps = checkpoints(run_dir)
    if not cps:
        raise ConfigError(f"{run_dir}: no checkpoint to resume from in {run_dir / 'checkpoints'}")
    return cps[0][1]


def check_splits(splits: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for s in ("train", "val", "test"):
        for q in splits[s]:
            if q in seen:
                raise ConfigError(f"split leakage: query {q!r} is in both {seen[q]} and {s}")
            seen[q] = s


def train(
    cfg: TrainConfig, resume: bool = False, argv: list[str] | None = None, args_dict: dict | None = None
) -> Path:
    """Train (or resume) and return the run folder. Everything is validated before anything is written.

    One job per run folder: a resume takes the folder's lock at once, a fresh run checks it is free
    and takes it before its first write; the lock is held until the job ends (rollouts/locks.py).
    """
    import torch

    from rollouts.locks import FolderLock, FolderLocked, is_locked

    torch.set_num_threads(cfg.torch_threads)
    name = cfg.name or default_name(cfg)
    run_dir = Path(cfg.runs_dir) / name
    lock = FolderLock(run_dir, "run folder")
    if not resume and is_locked(run_dir):
        raise FolderLocked(run_dir, lock.path, "run folder", is_locked(run_dir))
    try:
        if resume:
            lock.acquire()
            if not (run_dir / "config.yml").is_file():
                raise ConfigError(f"{run_dir}: no run to resume (config.yml missing)")
            latest_checkpoint(run_dir)
        elif run_dir.exists():
            raise ConfigError(
                f"{run_dir}: run folder exists; pass --resume to continue it or choose another --name"
            )
        return _train(cfg, resume, argv, args_dict, name, run_dir, lock)
    finally:
        lock.release()


def _train(
    cfg: TrainConfig,
    resume: bool,
    argv: list[str] | None,
    args_dict: dict | None,
    name: str,
    run_dir: Path,
    lock: FolderLock,
) -> Path:
    """The job itself, with the run folder's lock taken (resume) or checked to be free (fresh run)."""
    from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from env.allocate_env import AllocateEnv, ObsEncoder
    from env.outcomes import OutcomeTable
    from policies.base import lambda_grid
    from policies.ppo import (
        PPOConfig,
        load_model,
        make_meta,
        make_metrics_callback,
        make_model,
        make_val_metrics_callback,
    )
    from policies.resume import load_latest_good, purging_logger

    env_cfg = env_config_from(cfg.env)
    ppo_cfg = PPOConfig.from_dict(cfg.ppo)
    escalate = isinstance(env_cfg, EscalateConfig)
    if escalate and ppo_cfg.policy != "mlp":
        raise ConfigError("env.kind: escalate trains ppo.policy: mlp (the utility actor is one-shot only)")
    if cfg.warm_start_from and not resume:
        from policies.escalate_ppo import env_kind
        from policies.ppo import read_meta

        ws = Path(cfg.warm_start_from)
        if not escalate or env_kind(read_meta(ws / "best_model.zip" if ws.is_dir() else ws)) != "allocate":
            raise ConfigError("warm_start_from takes a one-shot run and needs env.kind: escalate")
    table = OutcomeTable(
        cfg.cache, mc_subsets=env_cfg.mc_subsets, outcome_seed=env_cfg.outcome_seed,
        latency_load=getattr(env_cfg, "latency_load", None),
        latency_load_models=getattr(env_cfg, "latency_load_models", None),
    )  # fmt: skip
    if resume:
        splits = json.loads((run_dir / "splits.json").read_text())
    else:
        splits = make_splits(table.query_ids, env_cfg.split_seed, env_cfg.split_fractions)
    check_splits(splits)
    for s in ("train", "val"):
        if not [q for q in splits[s] if q in table.qindex]:
            raise ConfigError(
                f"the {s} split of {cfg.cache} is empty ({len(table.query_ids)} queries); use other split_fractions"
            )
    train_rows = table.indices([q for q in splits["train"] if q in table.qindex])
    val_rows = table.indices([q for q in splits["val"] if q in table.qindex])
    env_cfg.resolve_ranges(table, train_rows)
    encoder = ObsEncoder.fit(table, train_rows, env_cfg)
    cfg.env = env_cfg.to_dict()
    cfg.name = name
    meta = make_meta(table, encoder, cfg.env)
    env_cls, env_kwargs = AllocateEnv, {}
    if escalate:  # the sequential env: same table, splits and encoder, plus its step menu and units
        from env.escalate_env import EscalateEnv, EscalateMenu, fit_units
        from policies.escalate_ppo import make_escalate_meta

        esc_menu = EscalateMenu(table, env_cfg)
        env_cls, env_kwargs = EscalateEnv, {"units": fit_units(table, esc_menu, train_rows)}
        meta = make_escalate_meta(table, encoder, cfg.env, esc_menu, env_kwargs["units"])

    def make_env(split, cycle=False, lambdas=None):
        return Monitor(
            env_cls(
                table=table,
                config=env_cfg,
                split=split,
                splits=splits,
                encoder=encoder,
                cycle=cycle,
                eval_lambdas=lambdas,
                **env_kwargs,
            )
        )

    train_env = DummyVecEnv([lambda: make_env("train") for _ in range(cfg.n_envs)])
    grid = lambda_grid(table, train_rows, cfg.val_grid) if env_cfg.penalty_mode == "sampled" else None
    val_lambdas = grid["points"] if grid else [(env_cfg.lambda_tokens, env_cfg.lambda_seconds)]
    eval_env = DummyVecEnv([lambda: make_env("val", cycle=True, lambdas=grid["points"] if grid else None)])
    n_eval = len(val_rows) * (len(grid["points"]) if grid else 1)
    if escalate:  # queries without a pool record are not in the sequential env
        n_eval = eval_env.envs[0].unwrapped.n_episodes_per_cycle

    tb_dir = run_dir / "tb"
    if resume:
        ckpt, model = load_latest_good(
            run_dir, lambda p: load_model(p, table, env=train_env, tensorboard_log=str(tb_dir))
        )
        old_env = model.ttc_meta["env"]
        if old_env != cfg.env:
            diff = sorted(k for k in set(old_env) | set(cfg.env) if old_env.get(k) != cfg.env.get(k))
            raise ConfigError(
                f"{ckpt}: trained with other env settings ({', '.join(diff)}); resume with the run's config"
            )
        if model.num_timesteps >= cfg.total_timesteps:
            raise ConfigError(
                f"{run_dir}: already trained {model.num_timesteps} >= total_timesteps {cfg.total_timesteps}; "
                "raise --total-timesteps to train further"
            )
    else:
        model = None

    # ---- everything validated: take the folder (another job may have started meanwhile), write it
    lock.acquire()
    if not resume and run_dir.exists():
        raise ConfigError(f"{run_dir}: run folder exists; pass --resume to continue it or choose another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if not resume:
        (run_dir / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    if not (run_dir / "args.yml").exists():  # the run's original arguments; resumes add to command.txt
        (run_dir / "args.yml").write_text(yaml.safe_dump(args_dict or {}, sort_keys=False))
    with open(run_dir / "command.txt", "a") as fh:
        fh.write(shlex.join(argv or sys.argv) + "\n")

    warm_start: dict[str, Any] | None = None
    clone: dict[str, Any] | None = None
    if model is None:
        spec = None
        if ppo_cfg.policy == "utility":
            from policies.utility_head import utility_spec

            spec = utility_spec(
                table,
                train_rows,
                encoder,
                cfg.env,
                ppo_cfg.utility_beta,
                ppo_cfg.utility_rank,
                ppo_trains=ppo_cfg.utility_ppo_trains,
                ensemble=ppo_cfg.utility_ensemble,
            )
        model = make_model(train_env, ppo_cfg, cfg.seed, str(tb_dir), meta, utility_spec=spec)
        if ppo_cfg.policy == "utility" and ppo_cfg.utility_warm_start:
            from policies.utility_head import warm_start_gain

            t_ws = time.time()
            warm_start = warm_start_gain(model.policy, table, encoder, train_rows, val_rows, seed=cfg.seed)
            warm_start["seconds"] = round(time.time() - t_ws, 2)
            print(
                f"warm start of the gain head: {warm_start['epochs']} epochs, validation MSE "
                f"{warm_start['val_mse']:.4f} (train means alone: {warm_start['val_mse_prior_only']:.4f})"
            )
        if escalate and cfg.warm_start_from:
            from policies.escalate_ppo import warm_start_from_oneshot
            from policies.escalate_sim import Simulator, make_orders

            tr = train_env.envs[0].unwrapped
            tr.reset(seed=cfg.seed)
            lams = [tr._draw_lambdas() for _ in range(32)]  # λ as the env draws them
            o, pk = make_orders(table, tr.menu, tr.rows, 2, seed=cfg.seed + 1)
            sim_tr = Simulator(table, tr.menu, encoder, tr.units, tr.rows, o, pk)
            t_ws = time.time()
            clone = warm_start_from_oneshot(
                model, cfg.warm_start_from, table, sim_tr, lams, env_cfg, tr._cost_scale, seed=cfg.seed
            )
            clone["seconds"] = round(time.time() - t_ws, 2)
            print(
                f"cloned the one-shot run {clone['run']}: {clone['samples']} steps, agreement {clone['agreement']:.3f}"
            )
    model.ttc_meta = meta
    if resume:  # hide what the killed job logged after this checkpoint: those steps are logged anew
        model.set_logger(purging_logger(tb_dir, "PPO", int(model.num_timesteps) + 1))

    hparams = {"seed": cfg.seed, "total_timesteps": cfg.total_timesteps, "n_envs": cfg.n_envs}
    for sec in ("env", "ppo"):
        for k, v in getattr(cfg, sec).items():
            hparams[f"{sec}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    best_path = run_dir / "best.json"

    class _BestTracker(BaseCallback):
        """Called on each new best validation result: records its value and when it happened."""

        def _on_step(self) -> bool:
            parent = self.parent
            best_path.write_text(
                json.dumps(
                    {"best_mean_reward": float(parent.best_mean_reward), "timesteps": int(self.num_timesteps)}
                )
                + "\n"
            )
            return True

    if escalate:
        from policies.escalate_ppo import make_escalate_val_callback
        from policies.escalate_sim import Simulator, make_orders

        val_env = eval_env.envs[0].unwrapped
        orders, picks = make_orders(table, val_env.menu, val_env.rows, 1, seed=env_cfg.outcome_seed)
        val_sim = Simulator(table, val_env.menu, encoder, val_env.units, val_env.rows, orders, picks)
        after_eval = make_escalate_val_callback(val_sim, val_lambdas)
    else:
        after_eval = make_val_metrics_callback(table, val_rows, val_lambdas)
    eval_cb = MaskableEvalCallback(
        eval_env,
        n_eval_episodes=n_eval,
        eval_freq=max(cfg.eval_freq // cfg.n_envs, 1),
        best_model_save_path=str(run_dir),
        log_path=str(run_dir / "eval"),
        deterministic=True,
        callback_after_eval=after_eval,
        callback_on_new_best=_BestTracker(),
        verbose=0,
    )
    if resume and best_path.is_file():
        eval_cb.best_mean_reward = float(json.loads(best_path.read_text())["best_mean_reward"])
    ckpt_cb = CheckpointCallback(
        save_freq=max(cfg.checkpoint_freq // cfg.n_envs, 1),
        save_path=str(run_dir / "checkpoints"),
        name_prefix="ppo",
    )

    class _EvalAtStart(BaseCallback):
        """One validation pass before the first PPO update of a fresh run, so the starting policy (the
        warm-started utility actor) is a candidate for best_model.zip: PPO is kept only if it helps."""

        def _on_training_start(self) -> None:
            if warm_start is not None:
                for k in ("train_mse", "val_mse", "val_mse_prior_only"):
                    self.logger.record(f"ttc/warm_start/{k}", warm_start[k])
            if not resume:
                eval_cb._on_step()  # n_calls == 0: EvalCallback evaluates, logs at step 0, saves if best

        def _on_step(self) -> bool:
            return True

    if escalate:
        from policies.escalate_ppo import make_escalate_metrics_callback

        metrics_cb = make_escalate_metrics_callback(hparams)
    else:
        metrics_cb = make_metrics_callback(table.action_ids, hparams)
    callbacks = CallbackList([metrics_cb, eval_cb, _EvalAtStart(), ckpt_cb])
    remaining = cfg.total_timesteps - (model.num_timesteps if resume else 0)
    t0 = time.time()
    start_steps = model.num_timesteps
    model.learn(
        total_timesteps=remaining,
        callback=callbacks,
        reset_num_timesteps=not resume,
        tb_log_name="PPO",
        progress_bar=cfg.progress_bar,
    )
    wall = time.time() - t0
    model.save(run_dir / "final_model.zip")
    if not (run_dir / "best_model.zip").exists():
        model.save(run_dir / "best_model.zip")
    summary: dict[str, Any] = {
        "timesteps": int(model.num_timesteps),
        "steps_this_run": int(model.num_timesteps - start_steps),
        "train_wall_seconds": round(wall, 2),
        "steps_per_second": round((model.num_timesteps - start_steps) / max(wall, 1e-9), 1),
        "resumed": resume,
    }
    if warm_start is not None:
        summary["warm_start"] = warm_start
    if clone is not None:
        summary["clone_of_oneshot"] = clone
    gate = None
    # the sequential policy's gate is not built yet; policies/gate.py's fallback-per-λ + open/closed
    # per region API is generic enough for it (fit_gate with its own held-out episode gains)
    # the validation-best checkpoint (what evaluate.py reports by default), loaded once: the gate is fitted
    # for it and the export ships it, not the last checkpoint
    best = load_model(run_dir / "best_model.zip", table) if cfg.export or (cfg.gate and not escalate) else None
    if cfg.gate and not escalate:
        from policies.gate_fit import fit_run_gate

        t_gate = time.time()
        gate = fit_run_gate(
            best, table, train_rows, val_rows, cfg.ppo,
            confidence=cfg.gate_confidence, folds=cfg.gate_folds, seed=cfg.seed,
        )  # fmt: skip
        (run_dir / "gate.json").write_text(json.dumps(gate.to_dict(), indent=1) + "\n")
        # SB3 dumps a train() call's values at the next rollout, so the last call's are still pending:
        # dumping them with the gate's would log the final step of train/* twice (resume tests read that)
        for pending in (model.logger.name_to_value, model.logger.name_to_count, model.logger.name_to_excluded):
            pending.clear()
        model.logger.record("ttc/gate/open_share", gate.open_share)
        if gate.shrinkage is not None:
            model.logger.record("ttc/gate/shrinkage", gate.shrinkage)
        model.logger.dump(model.num_timesteps)
        summary["gate"] = {
            "open_share": gate.open_share,
            "shrinkage": gate.shrinkage,
            "method": gate.method,
            "seconds": round(time.time() - t_gate, 2),
        }
        print(f"gate: open in {gate.open_share:.0%} of the λ regions, gain shrinkage α = {gate.shrinkage}")
    if cfg.export:
        from policies.export import export_policy, serving_spec

        if gate is not None and gate.shrinkage is not None:
            from policies.gate_fit import shrink_gain

            shrink_gain(best, gate.shrinkage)  # the shipped actor routes on α·δ (parity is checked on it)
        summary["onnx_parity"] = export_policy(
            best,
            run_dir / "export",
            source={
                "model": "best_model.zip",
                "timesteps": int(best.num_timesteps),
                "cache": cfg.cache,
                "run": str(run_dir),
            },
            serving=serving_spec(table),
            gate=gate,
        )
    summary_path = run_dir / "train_summary.json"
    history = json.loads(summary_path.read_text()) if summary_path.exists() else []
    history = history if isinstance(history, list) else [history]
    summary_path.write_text(json.dumps([*history, summary], indent=1) + "\n")
    train_env.close()
    eval_env.close()
    return run_dir


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument("--cache", help="rollout cache folder (default from the config: data/default_cache)")
    p.add_argument(
        "--name",
        help="run folder name under runs_dir (default: ttc-Allocate-v0__<exp>__<seed>__<unix time>); "
        "with --resume, the run to continue",
    )
    p.add_argument("--seed", type=int, help="seed of PPO, the warm start and the envs (default: 0)")
    p.add_argument(
        "--total-timesteps",
        type=int,
        dest="total_timesteps",
        help="env steps to train in all (default: 60000); with --resume, the new total",
    )
    p.add_argument(
        "--hyperparams",
        nargs="+",
        metavar="KEY=VALUE",
        help="overrides, e.g. ppo.learning_rate=1e-3 env.outcome=sampled (the old KEY:VALUE: deprecated)",
    )
    p.add_argument("--runs-dir", dest="runs_dir", help="parent of run folders (default: runs)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue runs_dir/<name> from its latest readable checkpoint, with its own config",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    try:
        if args.resume:
            if not args.name:
                raise ConfigError("--resume needs --name of the run to continue")
            run_dir = Path(args.runs_dir or "runs") / check_name(args.name)
            if not (run_dir / "config.yml").is_file():
                raise ConfigError(f"{run_dir}: no run to resume (config.yml missing)")
            d = load_yaml_file(run_dir / "config.yml")
            # the folder is the one named on the command line (a copied run resumes in the copy)
            d["name"], d["runs_dir"] = args.name, str(run_dir.parent)
            if args.hyperparams or args.cache or args.seed is not None:
                raise ConfigError(
                    "--resume continues the run's own config; only --total-timesteps may change"
                )
            if args.total_timesteps is not None:
                d["total_timesteps"] = args.total_timesteps
            if args.no_progress:
                d["progress_bar"] = False
            cfg = TrainConfig.from_dict(d)
        else:
            cfg = build_config(args)
        run_dir = train(cfg, resume=args.resume, argv=["python", "train.py", *argv], args_dict=vars(args))
    except TTCError as exc:
        return report(exc)
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
