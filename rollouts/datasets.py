"""Query sets: HF datasets by id, local JSONL, the shared test sets, and the project's arithmetic generator.

A source string picks the loader:

- ``hf:<id>[:<split>]``: ``datasets.load_dataset`` (``HuggingFaceH4/MATH-500``, ``openai/gsm8k``, an AIME
  set...), field names known per id, or set with ``question_field``/``answer_field``;
- ``jsonl:<path>``: a local JSONL file (field names guessed among the common ones, or given);
- ``arith:<seed>``: bare arithmetic of graded difficulty from a seeded generator (``arithmetic.py``).

Every query keeps its dataset name, its index in the source and a sha256 of its text, so a bundled
cache can refer to third-party questions without storing them (``rollouts/query.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rollouts.arithmetic import generate
from rollouts.errors import TTCError
from rollouts.query import Query


class DatasetError(TTCError):
    """A query source is unknown, unreadable or lacks the needed fields."""


# (question builder, answer getter) for known layouts, by field names present in a row.
def _question_answer(row: dict[str, Any], qf: str | None, af: str | None) -> tuple[str, str]:
    if qf and af:
        return str(row[qf]), _clean_answer(row[af])
    if "problem" in row and "answer" in row:  # MATH-500, AIME
        return str(row["problem"]), _clean_answer(row["answer"])
    if "question" in row and "answer" in row and "####" in str(row["answer"]):  # GSM8K
        return str(row["question"]), str(row["answer"]).split("####")[-1].strip().replace(",", "")
    if "input" in row and "target" in row:  # MAWPS
        return str(row["input"]), _clean_answer(row["target"])
    if "Body" in row and "Question" in row:  # SVAMP
        return f"{row['Body']} {row['Question']}", _clean_answer(row["Answer"])
    if "body" in row and "question" in row:  # ASDiv: answer like "9 (apples)"
        return f"{row['body']} {row['question']}", str(row["answer"]).split("(")[0].strip()
    if "question" in row and "answer" in row:
        return str(row["question"]), _clean_answer(row["answer"])
    raise DatasetError(f"cannot find question/answer fields among {sorted(row)}; set question_field/answer_field")


def _clean_answer(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def check_text_file(path: str | Path) -> int:
    """The number of non-blank lines of a UTF-8 text file (a folder: of its ``*.jsonl`` files; a
    binary format such as ``.parquet`` is left to its reader, which returns 1).

    DatasetError names the file and line of the first undecodable byte, or says the input is empty, so
    an import fails before it creates anything.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: input not found")
    if p.suffix == ".parquet":
        return 1
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    n += bool(raw.decode("utf-8").strip())
                except UnicodeDecodeError as exc:
                    raise DatasetError(f"{f}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if n == 0:
        raise DatasetError(f"{p}: empty input, nothing to import")
    return n


def load_queries(
    source: str,
    limit: int | None = None,
    offset: int = 0,
    question_field: str | None = None,
    answer_field: str | None = None,
    name: str | None = None,
    invalid_utf8: str = "error",
) -> list[Query]:
    """Load queries from a source string (see module docstring).

    A JSONL line that is not UTF-8 is a DatasetError naming file and line, or with
    ``invalid_utf8="keep"`` is decoded with lone surrogates, for a caller that refuses such questions
    one by one (route.py, rollouts/questions.py).
    """
    kind, _, rest = source.partition(":")
    if kind == "arith":
        seed = int(rest or 0)
        n = (limit or 400) + offset
        return generate(seed=seed, n=n)[offset:]
    if kind == "jsonl":
        path = Path(rest)
        if not path.exists():
            raise DatasetError(f"dataset file {path} not found")
        rows = []
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    if invalid_utf8 != "keep":
                        raise DatasetError(
                            f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                        ) from exc
                    line = raw.decode("utf-8", "surrogateescape")
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DatasetError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from exc
        ds_name = name or path.stem if path.parent.name in ("", ".") else name or f"{path.parent.name}/{path.stem}"
    elif kind == "hf":
        hf_id, _, split = rest.partition(":")
        try:
            import datasets

            ds = datasets.load_dataset(hf_id, split=split or "test")
        except Exception as exc:
            raise DatasetError(f"cannot load HF dataset {hf_id!r} (split {split or 'test'!r}): {exc}") from exc
        rows = list(ds)
        ds_name = name or hf_id
    else:
        raise DatasetError(f"unknown dataset source {source!r}: use hf:<id>[:split], jsonl:<path> or arith:<seed>")
    end = len(rows) if limit is None else min(len(rows), offset + limit)
    out = []
    for i in range(offset, end):
        q, a = _question_answer(rows[i], question_field, answer_field)
        out.append(Query(query_id=f"{ds_name}:{i}", question=q, answer=a, dataset=ds_name, index=i))
    return out
