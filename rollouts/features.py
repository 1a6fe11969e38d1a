"""Query features for the policy: the model's last-layer hidden state at the last prompt token.

This is the seed paper's probe input. It is computed with transformers on the same weights that the
engine serves (the converted folder for bundled models), from the same chat-formatted prompt, in
batches with a progress bar. The featurizer's identity (model, layer, dim) is stored in the cache
meta so that training, import and live routing featurize alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Featurizer:
    model: str  # resolved path or HF id
    layer: int = -1
    batch_size: int = 16
    name: str | None = None  # the user-facing model name (bundled alias or id) recorded in meta

    def __post_init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        self.tokenizer.padding_side = "left"  # the last prompt token sits at position -1 in every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(self.model, dtype=torch.float32)
        self.lm.eval()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "last_prompt_token_hidden_state",
            "model": self.name or self.model,
            "layer": self.layer,
            "dim": int(self.lm.config.hidden_size),
        }

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "input_ids"):
            out = out["input_ids"]
        return list(out)

    def features(self, prompts: Sequence[list[int]], progress: bool = True) -> np.ndarray:
        """Hidden states [len(prompts), hidden] for already tokenised prompts (token ids)."""
        from tqdm.auto import tqdm

        torch = self._torch
        rows: list[np.ndarray] = []
        bar = tqdm(total=len(prompts), desc="features", unit="q", disable=not progress)
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            width = max(len(p) for p in chunk)
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            with torch.no_grad():
                out = self.lm(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
            rows.append(out.hidden_states[self.layer][:, -1, :].float().numpy())
            bar.update(len(chunk))
        bar.close()
        return np.concatenate(rows, axis=0) if rows else np.zeros((0, self.lm.config.hidden_size), np.float32)
