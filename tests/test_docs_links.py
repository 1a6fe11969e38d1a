"""README.md and docs/*.md: every relative link and anchor resolves, and no line talks about how the
project was developed (issue numbers, branches, merges, sessions); the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
README_MAX_LINES = 300

#: ``[text](target)`` and ``![alt](target)``; the target up to the first space or closing parenthesis
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
#: words of the project's own history, which a user has no use for
HISTORY = [
    re.compile(r"\b[Ii]ssues? #?\d+"),
    re.compile(r"(?<![\w/&#])#\d{1,4}\b"),
    re.compile(r"\b[Tt]his branch\b"),
    re.compile(r"\b[Oo]n (?:the )?(?:main|master) branch\b"),
    re.compile(r"\b[Aa]fter (?:the (?:last )?)?merg(?:e|ing)\b"),
    re.compile(r"\bmerg(?:e|ed|ing) (?:of )?main\b"),
    re.compile(r"\b(?:[Pp]revious|[Ee]arlier|[Ll]ast|[Tt]his|[Oo]ther) sessions?\b"),
    re.compile(r"\b[Pp]ull request\b|\bPR #?\d"),
]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: inline markup dropped, lower case, punctuation removed, spaces
    to hyphens (letters, digits, ``_`` and ``-`` stay, non-ASCII letters too)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((no, line))
    return out


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path):
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    out = []
    for no, line in _prose_lines(path):
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        out.extend((no, m.group(1)) for m in LINK.finditer(line))
    return out


def broken_links(path: Path) -> list[str]:
    bad = []
    for no, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        rel, _, anchor = target.partition("#")
        dest = (path.parent / rel).resolve() if rel else path
        where = f"{path.relative_to(REPO)}:{no}: {target}"
        if not dest.exists():
            bad.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{where}: no heading with that anchor in {dest.relative_to(REPO)}")
        elif not dest.resolve().is_relative_to(REPO):
            bad.append(f"{where}: outside the repository")
    return bad


def history_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8").splitlines()
    return [
        f"{path.relative_to(REPO)}:{no}: {line.strip()[:120]}"
        for no, line in enumerate(text, 1)
        if any(p.search(line) for p in HISTORY)
    ]


def test_docs_exist() -> None:
    assert (REPO / "README.md").is_file()
    assert len(DOCS) > 5, DOCS


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    assert broken_links(path) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_development_history(path: Path) -> None:
    assert history_lines(path) == []


def test_readme_is_short() -> None:
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, n


def test_every_doc_is_linked_from_the_readme_or_another_doc() -> None:
    linked = {
        (p.parent / t.partition("#")[0]).resolve() for p in DOCS for _, t in links(p) if not t.startswith("#")
    }
    orphans = [str(p.relative_to(REPO)) for p in DOCS[1:] if p.resolve() not in linked]
    assert orphans == []


def test_the_checks_can_fail(tmp_path: Path) -> None:
    assert github_slug("The bundled default cache (`data/default_cache`)") == "the-bundled-default-cache-datadefault_cache"
    assert github_slug("Headline: PPO vs static, λ ≥ 0") == "headline-ppo-vs-static-λ--0"
    doc = tmp_path / "x.md"
    doc.write_text("# Top\n\n## Top\n\n[a](#top-1) [b](#nope) [c](missing.md) `[d](#code)`\n```\n[e](#fenced)\n```\n")
    assert anchors(doc) == {"top", "top-1"}
    assert [t for _, t in links(doc)] == ["#top-1", "#nope", "missing.md"]
    for line in ["see issue 17", "the #13 refactor", "on this branch", "after merging main", "in the previous session"]:
        assert any(p.search(line) for p in HISTORY), line
    for line in ["`#!/usr/bin/env bash`", "[x](#section-2)", "k/16 samples", "colour #1f77b4", "pass@16"]:
        assert not any(p.search(line) for p in HISTORY), line
