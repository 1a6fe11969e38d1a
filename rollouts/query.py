"""One query of a query set: its question, reference answer and where it came from.

The record every query source builds (``rollouts/datasets.py`` loads them, ``rollouts/arithmetic.py``
generates them) and the collector reads. It lives apart from both so that a source can build it
without importing the loader that dispatches to it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Query:
    """A question with its reference answer; ``dataset`` and ``index`` say where in its source it sits."""

    query_id: str
    question: str
    answer: str
    dataset: str
    index: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text_sha256(self) -> str:
        """sha256 of the question text: a bundled cache refers to third-party questions by it."""
        return hashlib.sha256(self.question.encode("utf-8")).hexdigest()
