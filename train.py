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
    rules.json         env.kind: escalate: every stopping-rule configuration's mean accuracy, tokens and
                       seconds on train + val (policies/rule_tuning.py); evaluate.py tunes the rules from it
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

Checkpoints (``*.zip``) are pickles and run code when loaded. Every zip is written atomically (temp
file, fsync, rename: a kill leaves the previous one whole) and its sha256 recorded in your trust store
(policies/trust.py, outside the run folder); ``--resume`` and ``warm_start_from`` load only zips whose
hash is there, others need ``--trust-checkpoint`` (see README, "Checkpoints are code").
Errors (bad cache, unknown key, bad λ, other action menu...) print one ``error: ...`` line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from env.allocate_env import EnvConfig
from env.escalate_env import EscalateConfig, env_config_from
from rollouts.config import config_from_dict, key_lines, load_yaml_file, parse_override
from rollouts.errors import ConfigError, TTCError, report

if TYPE_CHECKING:
    from rollouts.locks import FolderLock

ENV_NAME = "ttc-Allocate-v0"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "train_default.yaml"
DEFAULT_CONFIG_NAME = "configs/train_default.yaml"  # as --help and args.yml name it


def _default_ppo() -> dict[str, Any]:
    from policies.ppo import PPOConfig  # imported when needed: `train.py --help` stays light

    return PPOConfig().to_dict()


@dataclass
class TrainConfig:
    """One training run; the defaults are the shipped defaults (``configs/train_default.yaml``)."""

    cache: str | None = "data/default_cache"
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
    # env.kind: escalate only: a one-shot run whose shipped (gated) policy is one of the sequential
    # policy's floors (policies/sequential_gate.py); default: warm_start_from
    floor_oneshot: str | None = None
    # env.kind: escalate only: before PPO, behaviour-clone the floor (per λ the train+val best of the
    # tuned rules, the statics and the one-shot run above); false: clone warm_start_from's run, if any
    clone_floor: bool = True
    # env.kind: escalate only: sample orders per train + val query of the stopping rules' tuning at
    # training time (rules.json, reused by evaluate.py); 0: no tuning then (evaluate.py tunes on val)
    rule_orders: int = 1
    # the env (EnvConfig, or EscalateConfig with kind: escalate) and PPO settings, as plain mappings
    # (config.yml's env: and ppo:); validate() fills in the defaults of the keys a config leaves out
    # env.source: live: the live engine and dataset (env/live_config.py); `cache` is then written through
    live: dict[str, Any] | None = None
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
            "rule_orders",
        ):
            v = getattr(self, name)
            low = 0 if name in ("seed", "rule_orders") else 1
            if v < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
        c = self.gate_confidence
        if not 0.5 <= c < 1:
            raise ConfigError(f"gate_confidence must be a number in [0.5, 1), got {c!r}")
        if self.gate_folds < 3:
            raise ConfigError(f"gate_folds must be an integer >= 3, got {self.gate_folds!r}")
        if self.name is not None:
            check_name(self.name)
        if self.env.get("source") == "live" or self.live is not None:
            from env.live_config import check_live_training

            check_live_training(self)
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
        if section not in ("env", "ppo", "live"):
            raise ConfigError(f"unknown config key {key!r} (sections: env, ppo, live)")
        # the live block's keys are checked with it (env/live_config.py)
        if section != "live" and sub not in (env_keys if section == "env" else ppo_keys):
            raise ConfigError(f"unknown config key {key!r}")
        if not isinstance(d.get(section), dict):
            d[section] = {}
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
    from rollouts.console import display_path

    config = DEFAULT_CONFIG if args.config is None else args.config  # "": no file, the Python defaults
    d = load_yaml_file(config) if config else {}
    lines = key_lines(config) if config else {}
    cache, runs_dir = (display_path(v) if v else None for v in (args.cache, args.runs_dir))  # stored relative
    flags = {"cache": cache, "name": args.name, "seed": args.seed, "total_timesteps": args.total_timesteps,
             "progress_bar": False if args.no_progress else None, "runs_dir": runs_dir}  # fmt: skip
    for key, v in flags.items():
        if v is not None:
            d[key] = v
            lines.pop(key, None)
    for item in args.hyperparams or []:
        lines.pop(apply_override(d, *parse_override(item, legacy_colon=True)), None)
    return config_from_dict(TrainConfig, d, path=config or None, lines=lines)


def default_name(cfg: TrainConfig) -> str:
    env_name = "ttc-Escalate-v0" if cfg.env.get("kind") == "escalate" else ENV_NAME
    return f"{env_name}__{cfg.exp}__{cfg.seed}__{int(time.time())}"


# ----------------------------------------------------------------------------------------------
# Training


def train(
    cfg: TrainConfig,
    resume: bool = False,
    argv: list[str] | None = None,
    args_dict: dict | None = None,
    trust_checkpoint: bool = False,
) -> Path:
    """Train (or resume) and return the run folder. Everything is validated before anything is written.

    One job per run folder: a resume takes the folder's lock at once, a fresh run checks it is free
    and takes it before its first write; the lock is held until the job ends (rollouts/locks.py).
    """
    import torch

    from policies.resume import require_checkpoints
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
            require_checkpoints(run_dir)
        elif run_dir.exists():
            raise ConfigError(
                f"{run_dir}: run folder exists; pass --resume to continue it or choose another --name"
            )
        return _train(cfg, resume, argv, args_dict, name, run_dir, lock, trust_checkpoint)
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
    trust_checkpoint: bool = False,
) -> Path:
    """The job itself, with the run folder's lock taken (resume) or checked to be free (fresh run),
    as named stages (policies/training.py): set up → make envs → model → run folder → callbacks →
    learn → save and export."""
    from env.live_source import closing_live

    with closing_live():  # env.source: live: the collector (and a server it started) stop when the job ends
        return _run_job(cfg, resume, argv, args_dict, name, run_dir, lock, trust_checkpoint)


def _run_job(cfg: TrainConfig, resume: bool, argv: list[str] | None, args_dict: dict | None, name: str,
             run_dir: Path, lock: FolderLock, trust_checkpoint: bool) -> Path:
    """The stages, for :func:`_train`."""
    from policies import live_training as live
    from policies import training as stage
    from policies.run_folder import write_run_folder

    job = stage.set_up(cfg, name, run_dir, resume, trust_checkpoint)  # table, splits, encoder; cfg.env gets its λ ranges
    envs = live.wrap_envs(job, stage.make_envs(job))  # n_envs training envs, one validation env cycling over val x λ grid
    model = stage.load_resumed_model(job, envs) if resume else None  # refused before anything is written
    lock.acquire()  # everything validated: take the folder (another job may have started meanwhile)
    write_run_folder(run_dir, cfg.to_dict(), job.splits, resume, argv, args_dict)
    start_report: dict[str, Any] = {}  # a fresh model's warm start / one-shot clone, for train_summary.json
    if model is None:
        model, start_report = stage.make_fresh_model(job, envs)
    callbacks = live.add_callbacks(job, stage.make_callbacks(job, envs, start_report.get("warm_start")))
    summary = {**stage.learn(job, model, callbacks), **start_report}  # final_model.zip; steps, wall time
    source = live.live_source(job)
    if source is not None:
        summary["live"] = source.stats()  # engine seconds, new records, hit rate (train_summary.json)
    stage.save_and_export(job, model, summary)  # gate.json, export/, train_summary.json
    envs.close()
    return run_dir


def make_parser() -> argparse.ArgumentParser:
    from rollouts.console import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG_NAME} of this project)")
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
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load --resume's checkpoint and warm_start_from's model even if your train.py did not write "
        "them (a .zip runs code when loaded)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def stored_args(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as args.yml keeps them: paths inside the working directory relative to it, the
    default config by its name in the project."""
    from rollouts.console import display_path

    d = dict(vars(args))
    d["config"] = DEFAULT_CONFIG_NAME if args.config is None else display_path(args.config)
    for key in ("cache", "runs_dir"):
        if d.get(key):
            d[key] = display_path(d[key])
    return d


def main(argv: list[str] | None = None) -> int:
    from rollouts.console import plain_warnings

    plain_warnings()
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
        run_dir = train(
            cfg, resume=args.resume, argv=["python", "train.py", *argv], args_dict=stored_args(args),
            trust_checkpoint=args.trust_checkpoint,
        )  # fmt: skip
    except TTCError as exc:
        return report(exc)
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
