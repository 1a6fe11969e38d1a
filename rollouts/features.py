"""Query features for the policy: the model's last-layer hidden state at the last prompt token.

This is the seed paper's probe input. It is computed with transformers on the same weights that the
engine serves (the converted folder for bundled models), from the same chat-formatted prompt, in
batches with a progress bar. The featurizer's identity (model, layer, dim) is stored in the cache
meta so that training, import and live routing featurize alike.

Memory and speed: prompts are batched by length (sorted, so a batch pads little) under a token
budget (``max_batch_tokens`` = rows x padded width), and only the layer in use is kept: the last
layer is the base model's ``last_hidden_state`` (no ``output_hidden_states``, no LM head, no KV
cache), an earlier layer is caught with a forward hook that stops the pass there. ``iter_features``
yields each batch as soon as it is done, so a caller can write as it goes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np


class _Stop(Exception):
    """Raised by the layer hook once the wanted hidden state is captured (the rest is not needed)."""


@dataclass
class Featurizer:
    model: str  # resolved path or HF id
    layer: int = -1
    batch_size: int = 16  # most rows per batch
    name: str | None = None  # the user-facing model name (bundled alias or id) recorded in meta
    max_batch_tokens: int = 4096  # rows x padded width per forward pass: bounds activation memory

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
        self.base = self.lm.get_decoder() if hasattr(self.lm, "get_decoder") else self.lm.model
        n_layers = int(self.lm.config.num_hidden_layers)
        # hidden_states indexing: 0 = embeddings, i = output of block i-1, n_layers = final (normed) state
        idx = self.layer if self.layer >= 0 else n_layers + 1 + self.layer
        if not 0 <= idx <= n_layers:
            raise ValueError(f"layer {self.layer} is out of range for a model with {n_layers} layers")
        self._index = idx
        self._n_layers = n_layers

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "last_prompt_token_hidden_state",
            "model": self.name or self.model,
            "layer": self.layer,
            "dim": int(self.lm.config.hidden_size),
        }

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        # transformers 5 returns a BatchEncoding (a Mapping), older versions the ids themselves; the
        # declared return type is the union over every tokenize/return_dict setting, this call's is ids
        ids = out["input_ids"] if isinstance(out, Mapping) else out
        return list(cast(list[int], ids))

    def _batches(self, prompts: Sequence[list[int]]) -> Iterator[list[int]]:
        """Positions of prompts, by length, cut into batches under the row and token budgets."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        batch: list[int] = []
        for i in order:
            width = len(prompts[i])  # the longest so far: sorted ascending
            if batch and (len(batch) >= self.batch_size or (len(batch) + 1) * width > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _hidden(self, ids: Any, mask: Any) -> Any:
        """(rows, hidden) state of the configured layer at the last position."""
        torch = self._torch
        if self._index == self._n_layers:
            out = self.base(input_ids=ids, attention_mask=mask, use_cache=False)
            return out.last_hidden_state[:, -1, :]
        captured: dict[str, Any] = {}
        module = self.base.embed_tokens if self._index == 0 else self.base.layers[self._index - 1]

        def hook(_mod: Any, _inp: Any, output: Any) -> None:
            h = output[0] if isinstance(output, tuple) else output
            captured["h"] = h[:, -1, :].clone()
            raise _Stop

        handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                self.base(input_ids=ids, attention_mask=mask, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured["h"]

    def iter_features(self, prompts: Sequence[list[int]], bar: Any | None = None) -> Iterator[tuple[list[int], np.ndarray]]:
        """Yield (positions in ``prompts``, hidden states [len(positions), hidden]) batch by batch."""
        torch = self._torch
        pad = self.tokenizer.pad_token_id
        for batch in self._batches(prompts):
            chunk = [prompts[i] for i in batch]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            with torch.no_grad():
                h = self._hidden(ids, mask)
            if bar is not None:
                bar.update(len(batch))
            yield batch, h.float().numpy()

    def features(self, prompts: Sequence[list[int]], progress: bool = True) -> np.ndarray:
        """Hidden states [len(prompts), hidden] for already tokenised prompts (token ids), in input order."""
        from tqdm.auto import tqdm

        out = np.zeros((len(prompts), int(self.lm.config.hidden_size)), np.float32)
        with tqdm(total=len(prompts), desc="features", unit="q", disable=not progress) as bar:
            for pos, h in self.iter_features(prompts, bar):
                out[pos] = h
        return out
