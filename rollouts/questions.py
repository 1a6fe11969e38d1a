"""Checking a live question before it costs anything (route.py, serve.py).

A question is refused, with a reason, when it is empty after stripping, is not valid UTF-8 (a
dataset line or a command-line argument with undecodable bytes arrives with lone surrogates), is
longer than ``max_chars`` characters (checked before tokenizing, so a huge paste costs nothing), or
when its prompt (chat template included) leaves no room for the generation budget in the engine's
context (``max_prompt_tokens``): vLLM would refuse or crash on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_CHARS = 8000


@dataclass(frozen=True)
class QuestionLimits:
    """What a live question may be. ``max_prompt_tokens`` None: no token check."""

    max_chars: int = DEFAULT_MAX_CHARS
    max_prompt_tokens: int | None = None

    @classmethod
    def for_engine(cls, context_length: int, max_new_tokens: int, max_chars: int = DEFAULT_MAX_CHARS) -> QuestionLimits:
        """Limits for an engine of ``context_length`` tokens generating up to ``max_new_tokens``."""
        return cls(max_chars=max_chars, max_prompt_tokens=max(context_length - max_new_tokens, 0))


def text_problem(question: object, limits: QuestionLimits) -> str | None:
    """Why the question's text is refused (None: it is fine); needs no tokenizer."""
    if not isinstance(question, str):
        return f"a question must be a string, got {type(question).__name__}"
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid UTF-8 (undecodable byte at character {exc.start})"
    if not question.strip():
        return "empty question"
    if len(question) > limits.max_chars:
        return f"question of {len(question)} characters exceeds the limit of {limits.max_chars} (--max-chars)"
    return None


def check_question(
    question: object, limits: QuestionLimits, prompt_ids: Callable[[str], list[int]]
) -> tuple[list[int] | None, str | None]:
    """``(prompt token ids, None)`` for a good question, ``(None, reason)`` for a refused one.

    ``prompt_ids`` turns the question into the engine's prompt (the chat template the collection used).
    """
    problem = text_problem(question, limits)
    if problem is not None:
        return None, problem
    ids = prompt_ids(question)  # type: ignore[arg-type]
    if limits.max_prompt_tokens is not None and len(ids) > limits.max_prompt_tokens:
        return None, (
            f"prompt of {len(ids)} tokens exceeds the {limits.max_prompt_tokens} the engine's context leaves "
            "after the generation budget"
        )
    return ids, None
