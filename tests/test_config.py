"""One config system (issue #13): the dataclass defaults are the shipped defaults, one override syntax,
one way to validate, one error root."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

import collect
import train
from env.allocate_env import EnvConfig, make_splits
from env.escalate_env import EscalateConfig
from env.outcomes import OutcomeTable
from policies.ppo import PPOConfig
from rollouts.config import CollectConfig, config_from_dict, load_config, load_yaml_file, parse_override
from rollouts.errors import ConfigError, TTCError


def _defaults(cls) -> dict:
    return dataclasses.asdict(cls())


# ----------------------------------------------------------------------------------------------
# Defaults


def test_train_defaults_are_the_default_yaml():
    """The run train.py resolves from configs/train_default.yaml is the one Python builds with no YAML."""
    from_yaml = train.build_config(train.make_parser().parse_args([])).to_dict()
    from_python = train.TrainConfig().to_dict()
    assert from_yaml == from_python
    assert from_python["env"] == _defaults(EnvConfig) and from_python["ppo"] == _defaults(PPOConfig)
    assert train.TrainConfig.from_dict({}).to_dict() == from_python  # validation changes nothing
    assert train.build_config(train.make_parser().parse_args(["--config", ""])).to_dict() == from_python


def test_default_yaml_restates_every_key():
    """configs/train_default.yaml documents every key (a new field must be added there too)."""
    d = load_yaml_file(train.DEFAULT_CONFIG)
    assert set(d) == {f.name for f in dataclasses.fields(train.TrainConfig)}
    assert set(d["env"]) == {f.name for f in dataclasses.fields(EnvConfig)}
    assert set(d["ppo"]) == {f.name for f in dataclasses.fields(PPOConfig)}
    c = load_yaml_file(collect.DEFAULT_CONFIG)
    assert set(c) == {f.name for f in dataclasses.fields(CollectConfig)}


def test_default_run_writes_the_python_default_config(tiny_run, synthetic_cache):
    """config.yml of a train.py run (default --config, a few overrides) is what Python builds from the
    dataclass defaults with the same overrides and the λ ranges resolved the same way."""
    written = load_yaml_file(tiny_run / "config.yml")
    cfg = train.TrainConfig(
        cache=str(synthetic_cache), name="tiny", runs_dir=str(tiny_run.parent), total_timesteps=3072,
        progress_bar=False, n_envs=4, eval_freq=1024, checkpoint_freq=1024, val_grid=2,
    )  # fmt: skip
    env = EnvConfig()
    table = OutcomeTable(cfg.cache, mc_subsets=env.mc_subsets, outcome_seed=env.outcome_seed)
    splits = make_splits(table.query_ids, env.split_seed, env.split_fractions)
    env.resolve_ranges(table, table.indices(splits["train"]))
    cfg.env = env.to_dict()
    assert written == cfg.to_dict()


def test_collect_defaults_are_the_default_yaml(monkeypatch, tmp_path):
    """What `python collect.py` resolves (configs/collect_default.yaml) is CollectConfig()."""
    seen = []

    class Stop(Exception):
        pass

    def capture(cfg, **_):  # stands in for the collector: only the config it gets is under test
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(importlib.import_module("rollouts.executors"), "make_collector", capture)
    with pytest.raises(Stop):
        collect.main(["--no-progress"])
    assert seen == [CollectConfig()]
    assert load_config(None) == CollectConfig()


def test_escalate_yaml_is_an_override_set():
    """configs/train_escalate.yaml overrides the defaults; its resolved settings stay those it was tuned with."""
    cfg = train.build_config(train.make_parser().parse_args(["--config", "configs/train_escalate.yaml"]))
    assert cfg.env == {**_defaults(EscalateConfig), "kind": "escalate"}
    assert cfg.ppo == {**_defaults(PPOConfig), "policy": "mlp", "utility_warm_start": False, "utility_rank": 0,
                       "learning_rate": 3e-4, "n_steps": 512, "ent_coef": 0.01, "gamma": 1.0, "gae_lambda": 0.95}  # fmt: skip
    assert (cfg.total_timesteps, cfg.eval_freq, cfg.checkpoint_freq) == (200000, 20000, 50000)


# ----------------------------------------------------------------------------------------------
# One override syntax


@pytest.mark.parametrize(
    "item, key, value",
    [
        ("limit=20", "limit", 20),
        ("dataset=arith:0", "dataset", "arith:0"),
        ("dataset=hf:openai/gsm8k:test", "dataset", "hf:openai/gsm8k:test"),
        ("ppo.learning_rate=1e-3", "ppo.learning_rate", 0.001),
        ("menu=[{strategy: sample_pool, n: 4}]", "menu", [{"strategy": "sample_pool", "n": 4}]),
        (" seed =3", "seed", 3),
        ("warm_start_from=runs/a=b", "warm_start_from", "runs/a=b"),
    ],
)
def test_canonical_override(item, key, value, capsys):
    assert parse_override(item) == (key, value)
    assert parse_override(item, legacy_colon=True) == (key, value)
    assert capsys.readouterr().err == ""


def test_legacy_colon_override_warns_once(capsys):
    assert parse_override("ppo.learning_rate:1e-3", legacy_colon=True) == ("ppo.learning_rate", 0.001)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "ppo.learning_rate=1e-3" in err[0]
    assert parse_override("name:a=b", legacy_colon=True) == ("name", "a=b")  # the old rule: split at ':'
    assert parse_override("name:[x", legacy_colon=True) == ("name", "[x")  # the old rule: not YAML -> text
    capsys.readouterr()
    with pytest.raises(ConfigError, match="is not key=value"):
        parse_override("limit:20")  # collect never took key:value
    with pytest.raises(ConfigError, match="malformed value"):
        parse_override("menu=[x", legacy_colon=True)


def test_train_accepts_both_spellings(capsys):
    def build(*items):
        return train.build_config(train.make_parser().parse_args(["--hyperparams", *items])).to_dict()

    new = build("ppo.learning_rate=1e-3", "env.outcome=sampled", "total_timesteps=20000")
    assert capsys.readouterr().err == ""
    old = build("ppo.learning_rate:1e-3", "env.outcome:sampled", "total_timesteps:20000")
    assert old == new and new["ppo"]["learning_rate"] == 0.001 and new["env"]["outcome"] == "sampled"
    assert len(capsys.readouterr().err.splitlines()) == 3  # one warning line per old-style item


def test_train_cli_old_spelling_still_runs_to_the_same_error(synthetic_cache, tmp_path, capsys):
    rc = train.main(["--cache", str(synthetic_cache), "--runs-dir", str(tmp_path), "--no-progress",
                     "--hyperparams", "env.outcome_seed:abc"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[0].startswith("warning: ") and err[1].startswith("error: env.outcome_seed must be")


# ----------------------------------------------------------------------------------------------
# One way to validate, one error root


@pytest.mark.parametrize(
    "cls, where, data, message",
    [
        (CollectConfig, "", {"temprature": 0.5}, "unknown config key temprature"),
        (CollectConfig, "", {"limit": "abc"}, "limit must be an integer or null, got 'abc'"),
        (CollectConfig, "", {"limit": 0}, "limit must be >= 1"),
        (EnvConfig, "env.", {"lamda_tokens": 1}, "unknown config key env.lamda_tokens"),
        (EnvConfig, "env.", {"outcome_seed": "abc"}, "env.outcome_seed must be an integer, got 'abc'"),
        (EnvConfig, "env.", {"p_zero": 2}, "env.p_zero must be in [0, 1]"),
        (PPOConfig, "ppo.", {"n_step": 1}, "unknown config key ppo.n_step"),
        (PPOConfig, "ppo.", {"n_steps": 1.5}, "ppo.n_steps must be an integer, got 1.5"),
        (PPOConfig, "ppo.", {"activation": "gelu"}, "ppo.activation must be 'tanh' or 'relu'"),
        (train.TrainConfig, "", {"seeds": 1}, "unknown config key seeds"),
        (train.TrainConfig, "", {"env": [1, 2]}, "env must be a mapping of settings, got [1, 2]"),
        (train.TrainConfig, "", {"gate_folds": 2}, "gate_folds must be an integer >= 3"),
        (train.TrainConfig, "", {"ppo": {"gamma": -1}}, "ppo.gamma must be a finite number >= 0"),
    ],
)
def test_one_validation_path(cls, where, data, message):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(cls, data, where)
    assert message in str(exc.value)


def test_config_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("limit: 3\nmenu: [\n  - {strategy: sample_pool, n: 4\n")
    with pytest.raises(ConfigError, match=rf"{bad}:\d+: malformed YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'none.yaml'}: config file not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        train.build_config(train.make_parser().parse_args(["--config", str(tmp_path / "list.yaml")]))


def test_value_errors_name_the_file_line_of_the_key(tmp_path):
    """An error about a key the config file sets names file:line; one the command line set does not."""
    c = tmp_path / "c.yaml"
    c.write_text("dataset: arith:0\nlimit: abc\nmenu:\n  - {strategy: tree, n: 4}\n")
    with pytest.raises(ConfigError, match=rf"^{c}:2: limit must be an integer or null, got 'abc'$"):
        load_config(c)
    with pytest.raises(ConfigError, match=rf"^{c}:3: menu\[0\]: unknown strategy 'tree'"):
        load_config(c, ["limit=3"])
    with pytest.raises(ConfigError, match="^limit must be >= 1"):
        load_config(c, ["limit=0"])  # the override's fault, not the file's
    t = tmp_path / "t.yaml"
    t.write_text("seed: 0\nenv:\n  outcome: expected\n  outcome_seed: abc\nbogus: 1\n")

    def build(*argv):
        return train.build_config(train.make_parser().parse_args(["--config", str(t), *argv]))

    with pytest.raises(ConfigError, match=rf"^{t}:5: unknown config key bogus"):
        build()
    t.write_text("seed: 0\nenv:\n  outcome: expected\n  outcome_seed: abc\n")
    with pytest.raises(ConfigError, match=rf"^{t}:4: env.outcome_seed must be an integer, got 'abc'$"):
        build()
    with pytest.raises(ConfigError, match="^env.outcome_seed must be an integer, got 'x'$"):
        build("--hyperparams", "outcome_seed=x")  # a bare env key set on the command line
    assert build("--hyperparams", "env.outcome_seed=2").env["outcome_seed"] == 2


def test_one_error_root():
    from env import outcomes
    from policies.budget import BudgetError
    from policies.export import ExportError
    from policies.onnx_policy import OnnxPolicyError
    from policies.ppo import CheckpointError, MenuMismatchError
    from rollouts import config
    from rollouts.backends.base import BackendError
    from rollouts.cache import CacheError
    from rollouts.datasets import DatasetError
    from rollouts.importers.generic import LineError
    from rollouts.locks import FolderLocked
    from rollouts.models import ModelNotFound
    from route import RouteError
    from serve import RequestError

    assert outcomes.ConfigError is config.ConfigError is ConfigError
    classes = [ConfigError, BudgetError, ExportError, OnnxPolicyError, CheckpointError, MenuMismatchError,
               BackendError, CacheError, DatasetError, LineError, FolderLocked, ModelNotFound, RouteError,
               RequestError]  # fmt: skip
    assert all(issubclass(c, TTCError) and issubclass(c, ValueError) for c in classes)
    # the other bases callers catch them by
    assert issubclass(BackendError, RuntimeError) and issubclass(FolderLocked, RuntimeError)
    assert issubclass(ModelNotFound, FileNotFoundError)
    assert str(ModelNotFound("no model m")) == "no model m"
