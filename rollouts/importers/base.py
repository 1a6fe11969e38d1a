"""The types of an import (as ``rollouts/backends/base.py`` holds the backends'): what the importer
is given (a reader, a featurizer), what it reports (issues, the summary) and the identity hashes
the adapters share."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

DEFAULT_FEATURIZER = "smollm2-135m-instruct"
ON_ERROR = ("skip", "stop")


# ----------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class ImportIssue:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class ImportErrorReport:
    """The bad lines of an import, each reported as ``file:line: reason``."""

    def __init__(self) -> None:
        self.issues: list[ImportIssue] = []

    def add(self, file: str, line: int, reason: str) -> ImportIssue:
        issue = ImportIssue(file, line, reason)
        self.issues.append(issue)
        return issue

    def lines(self) -> list[str]:
        return [str(i) for i in self.issues]

    def __len__(self) -> int:
        return len(self.issues)

    def __bool__(self) -> bool:
        return bool(self.issues)

    def __str__(self) -> str:
        return "\n".join(self.lines())


class ImportStopped(Exception):
    """on_error="stop" met a bad line; the lines before it were imported."""

    def __init__(self, issue: ImportIssue):
        super().__init__(str(issue))
        self.issue = issue


# ----------------------------------------------------------------------------------------------
# Pieces the importer is given


class FeaturizerLike(Protocol):
    tokenizer: Any

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]: ...

    def features(self, prompts: Sequence[list[int]], progress: bool = True) -> Any: ...

    def describe(self) -> dict[str, Any]: ...


class Reader(Protocol):
    """An adapter: iterates (file, line, run dict or LineError) and describes its source."""

    name: str

    def __iter__(self) -> Any: ...

    def describe(self) -> dict[str, Any]: ...


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()



# ----------------------------------------------------------------------------------------------
# Summary


@dataclass
class ImportSummary:
    """What one import did (this run) and what the cache holds afterwards."""

    format: str
    out: str
    lines: int = 0
    imported: int = 0
    already_present: int = 0
    stopped: bool = False
    errors: ImportErrorReport = field(default_factory=ImportErrorReport)
    queries_new: int = 0
    features_reused: int = 0  # new queries whose features came from the feature store
    samples: int = 0
    results: int = 0
    fields: Counter = field(default_factory=Counter)  # "<field>:<origin>" -> count, for this run
    cache: dict[str, Any] = field(default_factory=dict)  # rollouts.stats.summarize + selector accuracies

    def share(self, fld: str, origin_prefix: str) -> float | None:
        tot = sum(v for k, v in self.fields.items() if k.startswith(fld + ":"))
        hit = sum(v for k, v in self.fields.items() if k.startswith(f"{fld}:{origin_prefix}"))
        return hit / tot if tot else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "out": self.out, "lines": self.lines, "imported": self.imported,
            "already_present": self.already_present, "stopped": self.stopped, "errors": self.errors.lines(),
            "queries_new": self.queries_new, "features_reused": self.features_reused, "samples": self.samples, "results": self.results,
            "fields": dict(self.fields), "cache": self.cache,
        }
