"""How a question becomes the model's prompt: chat messages, then the tokenizer's chat template.

One function for collection, import featurisation and live routing, so all see the same prompt.
"""

from __future__ import annotations

from typing import Any

DEFAULT_SUFFIX = " Answer with just the number."


def build_messages(question: str, suffix: str = DEFAULT_SUFFIX, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": question + suffix})
    return msgs


def prompt_token_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(out, list):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    return [int(t) for t in out]
