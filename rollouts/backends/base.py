"""The backend interface: token ids in, completions with engine token ids (and log-probs) out.

Token counts always come from the engine's token ids, never from re-tokenising text: a strategy's
cost is what the engine actually generated.
"""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rollouts.errors import TTCError


class BackendError(TTCError, RuntimeError):
    """The engine or server failed, or could not be reached; the message names it."""


@dataclass(frozen=True)
class SamplingSpec:
    n: int = 1
    temperature: float = 0.3
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = True  # the sampled token's log-prob, for the log-prob scorer

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "cancelled" (a race stopped it)
    logprobs: list[float] | None = None  # per generated token
    stop_reason: str | int | None = None  # the stop string that ended it, if any

    @property
    def tokens(self) -> int:
        return len(self.token_ids)

    @property
    def ended_by_stop_string(self) -> bool:
        return isinstance(self.stop_reason, str)


@dataclass
class Backend(ABC):
    model: str
    info: dict[str, Any] = field(default_factory=dict)
    # the engine's context length in tokens (prompt + generation), None where it is not known: the
    # offline engine's max_model_len option, the server's own for the openai backend (bounded by the option)
    max_model_len: int | None = None

    @abstractmethod
    def generate(self, prompts: list[list[int]], specs: list[SamplingSpec]) -> list[list[Completion]]:
        """Run one request per prompt (token ids) with its spec; all requests may be batched."""

    def generate_watched(
        self, prompts: list[list[int]], specs: list[SamplingSpec], on_finish: Callable[[int, int, Completion], bool]
    ) -> list[list[Completion]]:
        """Like :meth:`generate`, but calls ``on_finish(prompt index, sample index, completion)`` as each
        sample finishes, in the order the engine finishes them; once it returns True for a prompt, that
        prompt's unfinished samples are cancelled on the engine and come back with ``finish_reason``
        ``"cancelled"`` and the token ids the engine generated before the cancel.

        This default is for an engine that cannot cancel (the offline ``vllm.LLM``): it runs every
        sample to its end, then replays the finishes in the order a lockstep engine finishes them
        (generated tokens ascending, ties by sample order), so a race gets the same answer as its
        cached replay, but nothing is cancelled and every generated token is reported (a ``warning:``
        line says so once). The ``openai`` backend (a vLLM server) overrides it and really cancels."""
        if not getattr(self, "_race_warned", False):
            print(f"warning: the {self.info.get('backend', type(self).__name__)} backend cannot cancel samples: a race "
                  "runs all its samples to the end (same answer, no tokens or seconds saved); use the openai "
                  "backend (a vLLM server) to cancel", file=sys.stderr)
            self._race_warned = True
        outs = self.generate(prompts, specs)
        for pi, comps in enumerate(outs):
            # rollouts.strategies.race.finish_order (not imported: strategies import this module)
            for i in sorted(range(len(comps)), key=lambda j: (comps[j].tokens, j)):
                if on_finish(pi, i, comps[i]):
                    break
        return outs

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The HF tokenizer of the served model (chat template, decoding)."""

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, **self.info}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
