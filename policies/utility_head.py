"""A MaskablePPO actor whose logits are priced utilities: the reward's structure built into the policy.

With ``ppo.policy: utility`` the actor does not learn how penalties move the choice; it is told. For a
query ``q`` and penalties ``(λ_T, λ_L)`` decoded from the observation, the logit of action ``a`` is

    β · (c̄_a + δ_a(q) − λ_T · T̄_a − λ_L · S̄_a) / (floor + λ_T · C_T + λ_L · C_L)

- ``c̄_a``: action a's mean expected correctness on the train split (a fixed buffer), so the untrained
  actor already prefers the best static config at every λ;
- ``δ_a(q)``: the learned per-query gain, an MLP of the query part of the observation only
  (zero-initialised last layer; optionally rank-limited and an ensemble mean, :class:`GainEnsemble`).
  It never sees λ: how much a query gains from more compute does not depend on its price, and
  keeping λ out stops the network from learning price-specific quirks of a few hundred train queries;
- ``T̄_a``, ``S̄_a``: action a's mean tokens and seconds on the train split (buffers), as the seed paper's
  router prices configurations;
- the denominator is the env's ``reward_norm: context`` scale (1 when ``reward_norm: none``): it keeps the
  logit gaps, hence the policy's sharpness, comparable from "accuracy only" to "cost dominates";
- ``β = exp(log_beta)``: a learned inverse temperature.

The critic is SB3's usual MLP on the whole observation. ``δ`` can be warm-started by regression on the
train split's per-action correctness (:func:`warm_start_gain`); after that (or from zero) PPO's clipped
policy gradient trains the actor from the env's rewards; the structure only fixes how λ enters.
``forward_actor`` returns the logits and ``action_net`` is the identity, so ONNX export and
``predict`` need nothing special.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, cast

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.torch_layers import create_mlp
from torch import nn

from env.outcomes import OutcomeTable
from policies.observation import ObsEncoder


def utility_spec(
    table: OutcomeTable,
    train_rows: np.ndarray,
    encoder: ObsEncoder,
    env_cfg: dict[str, Any],
    beta: float,
    rank: int = 0,
    ppo_trains: str = "all",
    ensemble: int = 1,
) -> dict[str, Any]:
    """What the utility actor needs to know, from the train split only (stored in the checkpoint)."""
    rows = np.asarray(train_rows)
    prior = np.nan_to_num(table.mean_correct(rows), nan=0.0)
    mt, ms = table.mean_costs(rows)
    if env_cfg.get("reward_norm") == "context":
        floor = float(env_cfg["reward_norm_floor"])
        scale_t, scale_s = table.cost_scale(rows)
    else:
        floor, scale_t, scale_s = 1.0, 0.0, 0.0
    return {
        "base_dim": int(encoder.base_dim),
        "sample_penalties": bool(encoder.sample_penalties),
        "penalty_eps": [float(x) for x in encoder.eps],
        "penalty_center": [float(x) for x in encoder.center],
        "penalty_scale": [float(x) for x in encoder.scale],
        "fixed_lambda": [float(env_cfg.get("lambda_tokens", 0.0)), float(env_cfg.get("lambda_seconds", 0.0))],
        "prior_correct": [float(x) for x in prior],
        "mean_tokens": [float(x) for x in np.nan_to_num(mt, nan=0.0)],
        "mean_seconds": [float(x) for x in np.nan_to_num(ms, nan=0.0)],
        "norm_floor": floor,
        "norm_scale": [float(scale_t), float(scale_s)],
        "beta": float(beta),
        "rank": int(rank),
        "ppo_trains": ppo_trains,
        "ensemble": int(ensemble),
    }


def _mlp(in_dim: int, arch: list[int], activation_fn: type[nn.Module]) -> tuple[nn.Sequential, int]:
    """SB3's hidden layers (``create_mlp`` without an output layer) and their output width."""
    return nn.Sequential(*create_mlp(in_dim, -1, arch, activation_fn)), (arch[-1] if arch else in_dim)


class GainEnsemble(nn.Module):
    """The per-query gain δ(q): the mean of ``k`` independently initialised (and warm-started) members,
    each ``MLP -> [rank traits ->] n_actions``. Averaging members fitted from different starts cuts the
    variance of the gains, which the argmax over many near-equal actions otherwise turns into losses."""

    def __init__(self, in_dim: int, n_actions: int, net_arch: list[int], activation_fn, rank: int, k: int):
        super().__init__()
        members = []
        for _ in range(max(int(k), 1)):
            body, width = _mlp(in_dim, net_arch, activation_fn)
            if rank:
                # low rank: a few learned query traits (e.g. difficulty) x each action's response to them
                members.append(nn.Sequential(body, nn.Linear(width, rank), nn.Linear(rank, n_actions)))
            else:
                members.append(nn.Sequential(body, nn.Linear(width, n_actions)))
        self.members = nn.ModuleList(members)

    def member_nets(self) -> list[nn.Sequential]:
        """The members as the ``nn.Sequential`` each is (a ``ModuleList`` hands them out as ``nn.Module``)."""
        return [cast(nn.Sequential, m) for m in self.members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


class UtilityExtractor(nn.Module):
    """SB3 ``mlp_extractor`` contract: ``latent_dim_pi`` / ``latent_dim_vf``, ``forward_actor/critic``."""

    # buffers (register_buffer in __init__), declared so their type is known
    prior_correct: torch.Tensor
    mean_tokens: torch.Tensor
    mean_seconds: torch.Tensor
    penalty_eps: torch.Tensor
    penalty_center: torch.Tensor
    penalty_scale: torch.Tensor
    fixed_lambda: torch.Tensor
    norm_scale: torch.Tensor

    def __init__(
        self, obs_dim: int, n_actions: int, spec: dict[str, Any], net_arch: list[int], activation_fn
    ) -> None:
        super().__init__()
        self.base_dim = int(spec["base_dim"])
        self.sample_penalties = bool(spec["sample_penalties"])
        self.ppo_trains = str(spec.get("ppo_trains", "all"))
        self.gain_net = GainEnsemble(
            self.base_dim,
            n_actions,
            net_arch,
            activation_fn,
            int(spec.get("rank", 0)),
            int(spec.get("ensemble", 1)),
        )
        self.value_body, self.latent_dim_vf = _mlp(obs_dim, net_arch, activation_fn)
        self.latent_dim_pi = n_actions
        self.log_beta = nn.Parameter(torch.tensor(math.log(float(spec["beta"])), dtype=torch.float32))

        def buf(name: str, values) -> None:
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32))

        buf("prior_correct", spec["prior_correct"])
        buf("mean_tokens", spec["mean_tokens"])
        buf("mean_seconds", spec["mean_seconds"])
        buf("penalty_eps", spec["penalty_eps"])
        buf("penalty_center", spec["penalty_center"])
        buf("penalty_scale", spec["penalty_scale"])
        buf("fixed_lambda", spec["fixed_lambda"])
        buf("norm_scale", spec["norm_scale"])
        self.norm_floor = float(spec["norm_floor"])

    def reset_gain(self) -> None:
        """Zero the last layers: the untrained actor prices the train means, i.e. plays the best static."""
        for member in self.gain_net.member_nets():
            last = cast(nn.Linear, member[-1])
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def restore_trainable(self) -> None:
        """The trainable set PPO works on: everything, or all but the traits (``ppo_trains: response``)."""
        self.set_trait_trainable(self.ppo_trains == "all")

    def set_trait_trainable(self, trainable: bool) -> None:
        """Freeze (or free) everything of the gain head before its last layers: the query traits."""
        for member in self.gain_net.member_nets():
            for layer in list(member)[:-1]:
                for p in layer.parameters():
                    p.requires_grad_(trainable)

    def penalties(self, obs: torch.Tensor) -> torch.Tensor:
        """(batch, 2) raw (λ_T, λ_L): decoded from the observation, or the run's fixed values."""
        if not self.sample_penalties:
            return self.fixed_lambda.expand(obs.shape[0], 2)
        enc = obs[:, self.base_dim : self.base_dim + 2]
        lam = torch.pow(10.0, enc * self.penalty_scale + self.penalty_center) - self.penalty_eps
        return torch.clamp(lam, min=0.0)

    def forward_actor(self, obs: torch.Tensor) -> torch.Tensor:
        lam = self.penalties(obs)
        gain = self.gain_net(obs[:, : self.base_dim])
        price = lam[:, :1] * self.mean_tokens + lam[:, 1:] * self.mean_seconds
        norm = self.norm_floor + (lam * self.norm_scale).sum(dim=1, keepdim=True)
        return torch.exp(self.log_beta) * (self.prior_correct + gain - price) / norm

    def forward_critic(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_body(obs)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(obs), self.forward_critic(obs)


class UtilityPolicy(MaskableActorCriticPolicy):
    """MaskableActorCriticPolicy with :class:`UtilityExtractor` as actor/critic and an identity action head."""

    # SB3 annotates mlp_extractor as its MlpExtractor, but documents replacing it in _build_mlp_extractor
    # with any module that keeps the latent_dim_pi/vf and forward_actor/critic contract, as this one does.
    mlp_extractor: UtilityExtractor  # type: ignore[assignment]

    def __init__(self, *args, utility_spec: dict[str, Any], **kwargs) -> None:
        self.utility_spec = utility_spec
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        arch = self.net_arch if isinstance(self.net_arch, list) else list(self.net_arch.get("pi", [64, 64]))
        if not isinstance(self.action_space, spaces.Discrete):
            raise TypeError(f"the utility policy needs a Discrete action space, not {self.action_space}")
        self.mlp_extractor = UtilityExtractor(
            self.features_dim, int(self.action_space.n), self.utility_spec, list(arch), self.activation_fn
        )

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        # the extractor already ends in logits; SB3's Linear action head (and its optimizer slot) go
        self.action_net = nn.Identity()
        self.mlp_extractor.reset_gain()
        # "response": PPO moves each action's response to the (warm-started) query traits (weights and
        # bias), β and the critic; the traits themselves stay as the supervised fit left them
        self.mlp_extractor.restore_trainable()
        # type[Optimizer] has no lr parameter, though every optimizer class has one (SB3's _build ignores it too)
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["utility_spec"] = self.utility_spec
        return data


class HasUtilityExtractor(Protocol):
    """What :func:`warm_start_gain` reads of a policy: a :class:`UtilityPolicy`, or a holder of a bare
    extractor (policies/gate_fit.py)."""

    mlp_extractor: UtilityExtractor


def warm_start_gain(
    policy: HasUtilityExtractor,
    table: OutcomeTable,
    encoder: ObsEncoder,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    epochs: int = 300,
    lr: float = 1e-3,
    patience: int = 20,
    seed: int = 0,
) -> dict[str, float | list[int]]:
    """Fit the gain head to the train split's per-action correctness before PPO (supervised warm start).

    The cache knows every action's expected correctness for a train query; PPO only ever sees the reward
    of the action it drew. Regressing ``c̄_a + δ_a(q)`` on those values (masked MSE, Adam, early stopping
    on the validation split's MSE) hands PPO an actor that already routes by predicted gain, as the seed
    paper's probe does, and PPO refines it from rewards. Returns the MSEs (and each member's epochs) for
    the run's log.
    """
    ext: UtilityExtractor = policy.mlp_extractor
    net = ext.gain_net

    def tensors(rows):
        rows = np.asarray(rows)
        x = torch.as_tensor(encoder.encode_base(table.features[rows], table.prompt_tokens[rows]))
        y = torch.as_tensor(table.correct[rows], dtype=torch.float32) - ext.prior_correct
        m = torch.as_tensor(table.mask[rows], dtype=torch.float32)
        return x, y, m

    def mse(f, x, y, m) -> torch.Tensor:
        return (((f(x) - y) ** 2) * m).sum() / m.sum().clamp(min=1.0)

    ext.set_trait_trainable(True)
    xt, yt, mt = tensors(train_rows)
    xv, yv, mv = tensors(val_rows)
    with torch.no_grad():
        val_prior = float(((yv**2) * mv).sum() / mv.sum().clamp(min=1.0))
    gen = torch.Generator().manual_seed(seed)
    epochs_run = []
    for member in net.members:  # each member on its own: different starts and batch orders
        opt = torch.optim.Adam(member.parameters(), lr=lr)
        best, best_state, bad, ran = math.inf, None, 0, 0
        for _ in range(epochs):
            ran += 1
            perm = torch.randperm(len(xt), generator=gen)
            for lo in range(0, len(xt), 64):
                idx = perm[lo : lo + 64]
                opt.zero_grad()
                mse(member, xt[idx], yt[idx], mt[idx]).backward()
                opt.step()
            with torch.no_grad():
                vl = float(mse(member, xv, yv, mv))
            if vl < best - 1e-6:
                best, bad = vl, 0
                best_state = {k: v.clone() for k, v in member.state_dict().items()}
            else:
                bad += 1
                if bad >= patience:
                    break
        if best_state is not None:
            member.load_state_dict(best_state)
        epochs_run.append(ran)
    ext.restore_trainable()
    with torch.no_grad():
        train_mse, val_mse = float(mse(net, xt, yt, mt)), float(mse(net, xv, yv, mv))
    return {
        "epochs": epochs_run,
        "train_mse": train_mse,
        "val_mse": val_mse,
        "val_mse_prior_only": val_prior,
    }
