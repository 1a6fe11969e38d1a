"""Featurize concurrent requests together: one thread owns the tokenizer and the featurizer, takes
every request waiting (up to ``max_batch``, after waiting at most ``wait_s`` for more to arrive),
checks each question against the limits first (a refused one is answered before any forward pass),
runs one batched forward for the rest and lets the policy choose at each request's own prices.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class Refused(Exception):
    """The question is refused before routing (rollouts/questions.py); the message says why."""


@dataclass
class _Item:
    question: str
    lambda_tokens: float
    lambda_seconds: float
    future: Future[tuple[Any, str]] = field(default_factory=Future)


class FeaturizeBatcher:
    """``submit(question, λ_T, λ_S)`` -> a future of ``(prompted query, action id)``, or :class:`Refused`.

    ``router`` is a ``route.LiveRouter``: its ``check``, ``prompted`` and ``policy`` are used from this
    class's one thread only (HF fast tokenizers are not thread-safe), so no lock is needed.
    """

    def __init__(self, router: Any, wait_s: float = 0.005, max_batch: int = 32,
                 on_batch: Callable[[int], Any] | None = None) -> None:  # fmt: skip
        self.router, self.wait_s, self.max_batch, self.on_batch = router, wait_s, max_batch, on_batch
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self.batches = 0  # forward passes run
        self.batched = 0  # requests featurized in them
        self._thread = threading.Thread(target=self._loop, name="ttc-featurize", daemon=True)
        self._thread.start()

    def submit(self, question: str, lambda_tokens: float, lambda_seconds: float) -> Future[tuple[Any, str]]:
        item = _Item(question, lambda_tokens, lambda_seconds)
        self._queue.put(item)
        return item.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _take(self) -> list[_Item] | None:
        first = self._queue.get()
        if first is None:
            return None
        items = [first]
        deadline = time.monotonic() + self.wait_s
        while len(items) < self.max_batch:
            try:
                nxt = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)
                break
            items.append(nxt)
        return items

    def _loop(self) -> None:
        while (items := self._take()) is not None:
            try:
                self._run([it for it in items if it.future.set_running_or_notify_cancel()])
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets the failure
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(exc)

    def _run(self, items: list[_Item]) -> None:
        good = []
        for it in items:
            problem = self.router.check(it.question)  # text and prompt-token limits, before any forward
            if problem is None:
                good.append(it)
            else:
                it.future.set_exception(Refused(problem))
        if not good:
            return
        prompted, feats = self.router.prompted([it.question for it in good])
        self.batches, self.batched = self.batches + 1, self.batched + len(good)
        if self.on_batch is not None:
            self.on_batch(len(good))
        policy = self.router.policy
        for k, it in enumerate(good):
            idx = policy.act_index(feats[k : k + 1], [len(prompted[k].prompt_ids)], it.lambda_tokens, it.lambda_seconds)
            it.future.set_result((prompted[k], policy.menu[int(idx[0])]))
