"""The stages of one training job, in the order ``train.py`` runs them (as rl-baselines3-zoo's
ExperimentManager splits its ``train.py``): :func:`set_up` (validate, load the table, splits and
encoder), :func:`make_envs`, :func:`load_resumed_model`, :func:`policies.run_folder.write_run_folder`,
:func:`make_fresh_model`, :func:`make_callbacks`, :func:`learn`, :func:`save_and_export`.

Everything that can be refused is checked in the stages before ``write_run_folder``, so a bad
config or an unusable checkpoint leaves no trace. The run folder's layout is in ``train.py``'s
docstring; the callbacks the job trains with are in :mod:`policies.callbacks`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from env.allocate_env import AllocateEnv
from env.escalate_env import EscalateConfig, env_config_from
from env.live_source import open_table
from env.outcomes import OutcomeTable
from env.splits import make_splits, split_rows
from policies.observation import ObsEncoder
from policies.ppo import PPOConfig
from policies.run_folder import append_summary
from rollouts.console import note, phase
from rollouts.errors import ConfigError


@dataclass
class TrainingJob:
    """What the stages share: the run's config and the data it trains on, validated."""

    cfg: Any  # train.TrainConfig; set_up replaces cfg.env by the resolved env settings
    run_dir: Path
    resume: bool
    env_cfg: Any  # EnvConfig, or EscalateConfig for the sequential env
    ppo_cfg: PPOConfig
    table: OutcomeTable
    splits: dict[str, Any]
    train_rows: np.ndarray
    val_rows: np.ndarray
    encoder: ObsEncoder
    meta: dict[str, Any]  # the checkpoints' ttc_meta
    env_cls: type
    env_kwargs: dict[str, Any]
    trust_checkpoint: bool = False  # --trust-checkpoint: load zips this user's train.py did not write

    @property
    def escalate(self) -> bool:
        return isinstance(self.env_cfg, EscalateConfig)

    @property
    def tb_dir(self) -> Path:
        return self.run_dir / "tb"


@dataclass
class TrainingEnvs:
    """The vectorised training envs and the validation env (one cycle = every (val query, λ) once)."""

    train: Any  # DummyVecEnv of cfg.n_envs training envs
    val: Any  # DummyVecEnv of one cycling validation env
    val_lambdas: list[tuple[float, float]]
    n_eval: int  # validation episodes per evaluation

    def close(self) -> None:
        self.train.close()
        self.val.close()


# ----------------------------------------------------------------------------------------------
# Set up: the data, before anything is written


def check_splits(splits: dict[str, Any]) -> None:
    """No query in two splits (a hand-edited or foreign splits.json is refused)."""
    seen: dict[str, str] = {}
    for s in ("train", "val", "test"):
        for q in splits[s]:
            if q in seen:
                raise ConfigError(f"split leakage: query {q!r} is in both {seen[q]} and {s}")
            seen[q] = s


def _check_combination(cfg: Any, env_cfg: Any, ppo_cfg: PPOConfig, resume: bool, trust: bool) -> None:
    """Settings valid alone but not together."""
    escalate = isinstance(env_cfg, EscalateConfig)
    if escalate and ppo_cfg.policy != "mlp":
        raise ConfigError("env.kind: escalate trains ppo.policy: mlp (the utility actor is one-shot only)")
    if escalate and getattr(cfg, "clone_floor", False) and cfg.rule_orders < 1 and not resume:
        raise ConfigError("clone_floor needs the stopping rules tuned at training: rule_orders >= 1")
    for key in ("warm_start_from", "floor_oneshot"):
        if getattr(cfg, key, None) and not (resume and key == "warm_start_from"):
            from policies.escalate_ppo import env_kind
            from policies.ppo import read_meta

            ws = Path(getattr(cfg, key))
            if not escalate or env_kind(read_meta(ws / "best_model.zip" if ws.is_dir() else ws, trust)) != "allocate":
                raise ConfigError(f"{key} takes a one-shot run and needs env.kind: escalate")


def _train_val_rows(cfg: Any, table: OutcomeTable, splits: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The train and validation rows of the table (queries of the splits that the cache has)."""
    check_splits(splits)
    for s in ("train", "val"):
        if len(split_rows(table, splits, s)) == 0:
            raise ConfigError(
                f"the {s} split of {cfg.cache} is empty ({len(table.query_ids)} queries); use other split_fractions"
            )
    train_rows = split_rows(table, splits, "train")
    val_rows = split_rows(table, splits, "val")
    return train_rows, val_rows


def set_up(cfg: Any, name: str, run_dir: Path, resume: bool, trust: bool = False) -> TrainingJob:
    """Load the outcome table, the splits (a resume keeps its own) and fit the encoder on train;
    resolve the env's λ ranges into ``cfg.env`` and build the checkpoint meta. ``trust``
    (``--trust-checkpoint``): load zips this user's train.py did not write (policies/trust.py)."""
    from policies.ppo import make_meta
    from policies.trust import ensure_store

    ensure_store()  # every zip the job writes is recorded there: refuse an unwritable store before training
    env_cfg = env_config_from(cfg.env)
    ppo_cfg = PPOConfig.from_dict(cfg.ppo)
    _check_combination(cfg, env_cfg, ppo_cfg, resume, trust)
    table = open_table(cfg, env_cfg)  # the cache's, or a live source's (env/live_source.py)
    if resume:
        splits = json.loads((run_dir / "splits.json").read_text())
    else:
        splits = make_splits(table.query_ids, env_cfg.split_seed, env_cfg.split_fractions)
    train_rows, val_rows = _train_val_rows(cfg, table, splits)
    env_cfg.resolve_ranges(table, train_rows)
    encoder = ObsEncoder.fit(table, train_rows, env_cfg)
    cfg.env = env_cfg.to_dict()
    cfg.name = name
    meta = make_meta(table, encoder, cfg.env)
    env_cls: type = AllocateEnv
    env_kwargs: dict[str, Any] = {}
    if isinstance(env_cfg, EscalateConfig):  # the sequential env: same data, plus its step menu and units
        from env.escalate_env import EscalateEnv
        from env.escalate_menu import EscalateMenu
        from env.seen import fit_units
        from policies.escalate_ppo import describe_pools, make_escalate_meta

        esc_menu = EscalateMenu(table, env_cfg)
        # live: the train rows hold only what the policy asks for; the complete validation rows set the scales
        unit_rows = getattr(table, "reference_rows", train_rows)
        env_cls, env_kwargs = EscalateEnv, {"units": fit_units(table, esc_menu, unit_rows)}
        meta = make_escalate_meta(table, encoder, cfg.env, esc_menu, env_kwargs["units"])
        print(describe_pools(esc_menu))
    return TrainingJob(
        cfg, run_dir, resume, env_cfg, ppo_cfg, table, splits, train_rows, val_rows, encoder, meta, env_cls,
        env_kwargs, trust,
    )  # fmt: skip


def make_envs(job: TrainingJob) -> TrainingEnvs:
    """``n_envs`` training envs and one validation env cycling over every val query at each point of
    the validation λ grid (``val_grid`` x ``val_grid`` of the evaluation range; the fixed λ otherwise)."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from policies.base import lambda_grid

    cfg, env_cfg = job.cfg, job.env_cfg

    def make_env(split: str, cycle: bool = False, lambdas: Any = None) -> Monitor:
        return Monitor(
            job.env_cls(
                table=job.table, config=env_cfg, split=split, splits=job.splits, encoder=job.encoder,
                cycle=cycle, eval_lambdas=lambdas, **job.env_kwargs,
            )
        )  # fmt: skip

    train_env = DummyVecEnv([lambda: make_env("train") for _ in range(cfg.n_envs)])
    grid = lambda_grid(job.table, job.train_rows, cfg.val_grid) if env_cfg.penalty_mode == "sampled" else None
    val_lambdas = grid["points"] if grid else [(env_cfg.lambda_tokens, env_cfg.lambda_seconds)]
    val_env = DummyVecEnv([lambda: make_env("val", cycle=True, lambdas=grid["points"] if grid else None)])
    n_eval = len(job.val_rows) * (len(grid["points"]) if grid else 1)
    if job.escalate:  # queries without a pool record are not in the sequential env
        escalate_val: Any = val_env.envs[0].unwrapped
        n_eval = escalate_val.n_episodes_per_cycle
    return TrainingEnvs(train_env, val_env, val_lambdas, n_eval)


# ----------------------------------------------------------------------------------------------
# The model


def load_resumed_model(job: TrainingJob, envs: TrainingEnvs) -> Any:
    """The newest readable checkpoint, refused if it was trained with other env settings or has
    already reached ``total_timesteps``, or if it (or the run's best_model.zip, loaded at the end) was
    not written by this user's train.py and ``--trust-checkpoint`` was not given."""
    from policies.ppo import load_model
    from policies.resume import load_latest_good
    from policies.trust import read_checked

    cfg, run_dir, trust = job.cfg, job.run_dir, job.trust_checkpoint
    if (run_dir / "best_model.zip").is_file():
        read_checked(run_dir / "best_model.zip", trust)  # refused now, not after training
    ckpt, model = load_latest_good(
        run_dir, lambda p: load_model(p, job.table, env=envs.train, tensorboard_log=str(job.tb_dir), trust=trust)
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
    return model


def make_fresh_model(job: TrainingJob, envs: TrainingEnvs) -> tuple[Any, dict[str, Any]]:
    """A new MaskablePPO, warm-started if the config says so: the utility actor's gain head fitted
    on the train split (``ppo.utility_warm_start``), or the step policy cloned from a one-shot run
    (``warm_start_from``). Returns the model and what the warm start reports for train_summary.json
    (``warm_start`` / ``clone_of_oneshot``)."""
    from policies.ppo import make_model

    cfg, ppo_cfg, table = job.cfg, job.ppo_cfg, job.table
    spec = None
    if ppo_cfg.policy == "utility":
        from policies.utility_head import utility_spec

        spec = utility_spec(
            table, job.train_rows, job.encoder, cfg.env, ppo_cfg.utility_beta, ppo_cfg.utility_rank,
            ppo_trains=ppo_cfg.utility_ppo_trains, ensemble=ppo_cfg.utility_ensemble,
        )  # fmt: skip
    model = make_model(envs.train, ppo_cfg, cfg.seed, str(job.tb_dir), job.meta, utility_spec=spec)
    report: dict[str, Any] = {}
    if ppo_cfg.policy == "utility" and ppo_cfg.utility_warm_start:
        from policies.utility_head import warm_start_gain

        t_ws = time.time()
        with phase(f"warm start: fitting the gain head on {len(job.train_rows)} train queries"):
            ws = warm_start_gain(model.policy, table, job.encoder, job.train_rows, job.val_rows, seed=cfg.seed)
        ws["seconds"] = round(time.time() - t_ws, 2)
        epochs = ws["epochs"] if isinstance(ws["epochs"], list) else [ws["epochs"]]  # one per ensemble member
        print(
            f"warm start of the gain head: {'/'.join(map(str, epochs))} epochs, validation MSE "
            f"{ws['val_mse']:.4f} (train means alone: {ws['val_mse_prior_only']:.4f})"
        )
        report["warm_start"] = ws
    if job.escalate:
        from policies.escalate_ppo import escalate_warm_start

        report.update(escalate_warm_start(job, model, envs.train.envs[0].unwrapped))
    return model, report


# ----------------------------------------------------------------------------------------------
# Callbacks, learning, saving


def make_callbacks(job: TrainingJob, envs: TrainingEnvs, warm_start: dict[str, Any] | None) -> Any:
    """ttc/ training metrics (with the hyperparameters), validation every ``eval_freq`` steps into
    best_model.zip + best.json (and once at step 0 of a fresh run), a checkpoint every
    ``checkpoint_freq`` steps."""
    from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
    from stable_baselines3.common.callbacks import CallbackList

    from policies import callbacks as cb

    cfg, run_dir, table = job.cfg, job.run_dir, job.table
    hparams = {"seed": cfg.seed, "total_timesteps": cfg.total_timesteps, "n_envs": cfg.n_envs}
    for sec in ("env", "ppo"):
        for k, v in getattr(cfg, sec).items():
            hparams[f"{sec}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    best_path = run_dir / "best.json"
    if job.escalate:
        from policies.escalate_ppo import env_simulator

        val_env = envs.val.envs[0].unwrapped
        val_sim = env_simulator(val_env, table, job.encoder, 1, seed=job.env_cfg.outcome_seed)
        after_eval: Any = cb.EscalateValCallback(val_sim, envs.val_lambdas)
    else:
        after_eval = cb.ValMetricsCallback(table, job.val_rows, envs.val_lambdas)
    eval_cb = MaskableEvalCallback(  # BestTracker saves best_model.zip (atomically, recorded as trusted)
        envs.val, n_eval_episodes=envs.n_eval, eval_freq=max(cfg.eval_freq // cfg.n_envs, 1),
        log_path=str(run_dir / "eval"), deterministic=True, callback_after_eval=after_eval,
        callback_on_new_best=cb.BestTracker(best_path, run_dir / "best_model.zip"), verbose=0,
    )  # fmt: skip
    if job.resume and best_path.is_file():
        eval_cb.best_mean_reward = float(json.loads(best_path.read_text())["best_mean_reward"])
    ckpt_cb = cb.TrustedCheckpointCallback(
        save_freq=max(cfg.checkpoint_freq // cfg.n_envs, 1),
        save_path=str(run_dir / "checkpoints"),
        name_prefix="ppo",
    )
    at_start = cb.EvalAtStart(eval_cb, fresh=not job.resume, warm_start=warm_start)
    if job.escalate:
        metrics_cb: Any = cb.EscalateMetricsCallback(hparams)
    else:
        metrics_cb = cb.TTCMetricsCallback(table.action_ids, hparams)
    return CallbackList([metrics_cb, eval_cb, at_start, ckpt_cb])


def learn(job: TrainingJob, model: Any, callbacks: Any) -> dict[str, Any]:
    """PPO up to ``total_timesteps`` (a resume continues its step count and TensorBoard curves), then
    final_model.zip (and best_model.zip if no evaluation ran). Returns the summary's timing part."""
    from policies.escalate_ppo import pools_used
    from policies.resume import purging_logger
    from policies.trust import save_model

    cfg, run_dir = job.cfg, job.run_dir
    model.ttc_meta = job.meta
    if job.resume:  # hide what the killed job logged after this checkpoint: those steps are logged anew
        model.set_logger(purging_logger(job.tb_dir, "PPO", int(model.num_timesteps) + 1))
    remaining = cfg.total_timesteps - (model.num_timesteps if job.resume else 0)
    t0 = time.time()
    start_steps = model.num_timesteps
    note(f"PPO: {remaining} env steps, validation every {cfg.eval_freq} (TensorBoard: {job.tb_dir})")
    model.learn(
        total_timesteps=remaining, callback=callbacks, reset_num_timesteps=not job.resume, tb_log_name="PPO",
        progress_bar=cfg.progress_bar,
    )  # fmt: skip
    wall = time.time() - t0
    save_model(model, run_dir / "final_model.zip")  # atomically, recorded as trusted (policies/trust.py)
    if not (run_dir / "best_model.zip").exists():
        save_model(model, run_dir / "best_model.zip")
    return {
        "timesteps": int(model.num_timesteps),
        "steps_this_run": int(model.num_timesteps - start_steps),
        "train_wall_seconds": round(wall, 2),
        "steps_per_second": round((model.num_timesteps - start_steps) / max(wall, 1e-9), 1),
        "resumed": job.resume,
        **pools_used(job.meta),  # sequential runs: the pools the env draws from
    }


def save_and_export(job: TrainingJob, model: Any, summary: dict[str, Any]) -> None:
    """The gate (``gate: true``, one-shot runs), the tuned stopping rules (``rules.json``, sequential
    runs) and the ONNX export (``export: true``) of the validation-best checkpoint (what evaluate.py
    reports by default, not the last one), then one more entry of train_summary.json."""
    from policies.ppo import load_model

    cfg, run_dir = job.cfg, job.run_dir
    gate_it = cfg.gate and not job.escalate  # the sequential gate needs the tuned rules: below
    best = (  # loaded once; trusted as a resume checked it up front
        load_model(run_dir / "best_model.zip", job.table, trust=job.trust_checkpoint) if cfg.export or cfg.gate else None
    )
    from policies.gate_fit import fit_and_record_run_gate

    gate = fit_and_record_run_gate(job, model, best, summary) if gate_it else None
    if job.escalate and cfg.rule_orders > 0 and "rules" not in summary:  # tuned once on train + val (clone_floor: before PPO)
        from policies.rule_tuning import write_run_rules

        summary["rules"] = write_run_rules(job, progress=cfg.progress_bar)
    seq_gate = None
    if job.escalate and cfg.gate:  # the rule floor: policies/sequential_gate.py
        from policies.sequential_gate import fit_and_record_sequential_gate

        seq_gate = fit_and_record_sequential_gate(job, model, best, summary)
    if cfg.export:
        from policies.export import export_policy, serving_spec

        assert best is not None

        if gate is not None and gate.shrinkage is not None:
            from policies.gate_fit import shrink_gain

            shrink_gain(best, gate.shrinkage)  # the shipped actor routes on α·δ (parity is checked on it)
        source = {
            "model": "best_model.zip",
            "timesteps": int(best.num_timesteps),
            "cache": cfg.cache,
            "run": str(run_dir),
        }
        with phase(f"exporting the best model to {run_dir / 'export'} (ONNX, parity-checked)"):
            summary["onnx_parity"] = export_policy(
                best, run_dir / "export", source=source, serving=serving_spec(job.table), gate=gate,
                sequential_gate=seq_gate,
            )
        if seq_gate is not None:
            from policies.sequential_gate import embed_oneshot_floor

            embed_oneshot_floor(seq_gate, run_dir / "export")
    append_summary(run_dir, summary)
