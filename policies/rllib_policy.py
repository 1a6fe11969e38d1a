"""An RLlib-trained policy behind the project's ``AllocationPolicy`` call, for evaluate.py's comparisons.

The RL module (RLlib's action-masking PPO module) is asked for its greedy action on the observation
the env would show (``ObsEncoder.encode`` of the query's features, prompt length and the penalties)
with the table's mask, exactly as ``PPOPolicy`` does for SB3 models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from env.outcomes import OutcomeTable
from env.rllib import MASK_KEY, OBS_KEY
from policies.base import AllocationPolicy, first_legal
from policies.observation import ObsEncoder


class RLlibPolicy(AllocationPolicy):
    """Argmax of an RLlib RL module's masked action logits (``forward_inference``)."""

    name = "rllib_ppo"

    def __init__(self, module: Any, encoder: ObsEncoder, menu: list[str]):
        self.module = module
        self.encoder = encoder
        self.menu = list(menu)

    def choose(self, table: OutcomeTable, rows, lambda_tokens, lambda_seconds) -> np.ndarray:
        import torch
        from ray.rllib.core.columns import Columns

        if list(table.action_ids) != self.menu:
            raise ValueError("this RLlib policy was trained on another action menu")
        rows = np.asarray(rows)
        obs = self.encoder.encode(table.features[rows], table.prompt_tokens[rows], lambda_tokens, lambda_seconds)
        mask = table.mask[rows]
        batch = {Columns.OBS: {OBS_KEY: torch.as_tensor(obs, dtype=torch.float32),
                               MASK_KEY: torch.as_tensor(mask, dtype=torch.float32)}}
        with torch.no_grad():
            logits = self.module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]
        actions = np.asarray(logits.argmax(dim=-1).cpu().numpy(), dtype=np.int64)
        return first_legal(mask, actions)  # the mask already made illegal logits ~ -inf; this is a guard
