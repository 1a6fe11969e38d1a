"""The RLlib view of the envs (env/rllib.py): Dict observation with the action mask, register_env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

from env.rllib import MASK_KEY, OBS_KEY, RLlibActionMask, make_masked_env, register_rllib_envs, ttc_env_ids

# check_env notes that it sees a wrapper: the wrapper is what is under test
pytestmark = pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")


class _StepMaskEnv(gym.Env):
    """Test fixture: a 3-step env whose legal actions change every step (like a sequential env)."""

    observation_space = spaces.Box(0.0, 3.0, shape=(1,), dtype=np.float32)
    action_space = spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        reward = 1.0 if self.action_masks()[action] else -1.0
        self.t += 1
        return np.array([float(self.t)], np.float32), reward, self.t >= 3, False, {}

    def action_masks(self):
        m = np.zeros(4, dtype=bool)
        m[self.t] = m[3] = True  # action t and the last one are legal at step t
        return m


def test_allocate_env_wrapped_passes_check_env_and_carries_the_mask(synthetic_cache):
    env = make_masked_env("ttc/Allocate-v0", cache=str(synthetic_cache), split="train")
    check_env(env, skip_render_check=True)
    assert set(env.observation_space.spaces) == {OBS_KEY, MASK_KEY}
    obs, _ = env.reset(seed=3)
    inner = env.unwrapped
    assert np.array_equal(obs[MASK_KEY], inner.action_masks().astype(np.float32))
    assert np.array_equal(obs[OBS_KEY], inner._obs)
    assert obs in env.observation_space
    a = int(np.flatnonzero(obs[MASK_KEY])[0])
    _, reward, terminated, _, info = env.step(a)
    assert terminated and np.isfinite(reward) and info["action"] == a


def test_the_mask_follows_each_step_of_a_sequential_env():
    env = RLlibActionMask(_StepMaskEnv())
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    for t in range(3):
        expected = np.zeros(4, np.float32)
        expected[t] = expected[3] = 1.0
        assert np.array_equal(obs[MASK_KEY], expected)
        obs, *_ = env.step(t)


def test_refuses_envs_without_a_mask_or_a_discrete_action_space():
    with pytest.raises(TypeError, match="action_masks"):
        RLlibActionMask(gym.make("CartPole-v1"))
    with pytest.raises(TypeError, match="Discrete"):
        RLlibActionMask(gym.make("Pendulum-v1"))


def test_register_env_builds_the_wrapped_env_from_rllib_env_config(synthetic_cache):
    from ray.tune.registry import ENV_CREATOR, _global_registry

    assert "ttc/Allocate-v0" in ttc_env_ids()
    ids = register_rllib_envs()
    assert "ttc/Allocate-v0" in ids
    creator = _global_registry.get(ENV_CREATOR, "ttc/Allocate-v0")
    env = creator({"cache": str(synthetic_cache), "split": "val", "penalty_mode": "fixed"})
    assert isinstance(env, RLlibActionMask)
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space and env.unwrapped.config.penalty_mode == "fixed"


def test_escalate_env_wrapped_follows_its_mask_every_step():
    from pathlib import Path

    bundled = Path(__file__).resolve().parents[1] / "data" / "default_cache"
    env = make_masked_env("ttc/Escalate-v0", cache=str(bundled), split="train")
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    done = False
    while not done:
        assert np.array_equal(obs[MASK_KEY], env.unwrapped.action_masks().astype(np.float32))
        assert obs in env.observation_space
        obs, _, terminated, truncated, _ = env.step(int(np.flatnonzero(obs[MASK_KEY])[0]))
        done = terminated or truncated
