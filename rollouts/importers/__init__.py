"""Bring your own rollouts: import third-party strategy runs into a rollout cache (schema v1).

Adapters (``generic``, ``qwen25math``, ``search_and_learn``) turn their native rows into run dicts
of the generic format (``generic.parse_run``); the ``Importer`` (``importer.py``, with its record
rules in ``records.py`` and its types in ``base.py``) validates them, fills what is missing and labels
where every field came from:

- ``correct`` missing: graded with math-verify against the reference (``graded:math-verify``);
- ``answer`` missing: extracted from the sample text with math-verify (``extracted:math-verify``);
- token counts missing: counted from the text with a named tokenizer (``tokenizer:<name>``);
- ``seconds`` missing: from a latency model fitted on this project's own measurements
  (``modelled:<label>``, ``seconds_source="modelled"``), or ``missing`` without one;
- scorer tokens missing for scored samples: prompt + sample tokens (what a reward model reads).

Query features are computed with a local featurizer on the chat-formatted question (the collector's
prompt builder), batched, and the featurizer is recorded in the cache meta. Question text and
reference answers are not stored unless ``keep_text``: a query keeps its dataset, index and the
sha256 of its text. Errors are reported as ``file:line: reason``; ``on_error="skip"`` imports the
rest, ``"stop"`` stops at the first bad line after writing the good lines before it. Keys already in
the cache are skipped, so a re-run neither loses nor duplicates anything.

This front file holds the factories of what an import is given (featurizer, tokenizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollouts.importers.base import DEFAULT_FEATURIZER
from rollouts.importers.importer import Importer

__all__ = ["DEFAULT_FEATURIZER", "Importer", "load_featurizer", "load_tokenizer"]


_FEATURIZERS: dict[tuple[str, int], Any] = {}


def load_featurizer(model: str = DEFAULT_FEATURIZER, layer: int = -1, batch_size: int = 16) -> Any:
    """A ``rollouts.features.Featurizer`` for a bundled name, local folder or HF id (cached per process)."""
    key = (model, layer)
    if key not in _FEATURIZERS:
        from rollouts.features import Featurizer
        from rollouts.models import resolve_model

        _FEATURIZERS[key] = Featurizer(resolve_model(model), layer=layer, batch_size=batch_size, name=model)
    return _FEATURIZERS[key]


def load_tokenizer(name: str, allow_download: bool = False) -> Any:
    """An HF tokenizer for counting tokens, found without the network unless ``allow_download``.

    ``name`` is a bundled model name, a local folder (a model folder, or a tokenizer-only one: a
    ``tokenizer.json`` with or without ``tokenizer_config.json``, no ``config.json`` needed), a single
    ``tokenizer.json`` file (transformers' fast tokenizer loads it alone), or an HF id already in the
    local HF cache. Anything else raises ``ModelNotFound`` at once, naming it.
    """
    from rollouts.models import BUNDLED, ModelNotFound, resolve_model

    if name in BUNDLED:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_model(name))
    p = Path(name).expanduser()
    if p.is_file():
        if p.suffix != ".json":
            raise ModelNotFound(f"tokenizer file {p} is not a tokenizer.json")
        from transformers import PreTrainedTokenizerFast

        try:
            return PreTrainedTokenizerFast(tokenizer_file=str(p))
        except Exception as exc:  # tokenizers raises its own exception types for a bad file
            raise ModelNotFound(f"tokenizer file {p} cannot be read ({exc})") from None
    if p.is_dir():
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        try:
            return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError, KeyError):
            if not (p / "tokenizer.json").exists():
                raise ModelNotFound(f"tokenizer folder {p} has no tokenizer.json and no loadable tokenizer") from None
            return PreTrainedTokenizerFast(tokenizer_file=str(p / "tokenizer.json"))
    if name.startswith((".", "/", "~")):
        raise ModelNotFound(f"tokenizer path {name!r} does not exist")
    if not allow_download:
        # look in the local HF cache before importing transformers (seconds): a miss fails at once
        from huggingface_hub import try_to_load_from_cache

        def cached(f: str) -> bool:
            try:
                return isinstance(try_to_load_from_cache(name, f), str)
            except ValueError:  # not even a valid repo id
                return False

        if not any(cached(f) for f in ("tokenizer.json", "tokenizer_config.json")):
            raise ModelNotFound(f"tokenizer {name!r}: not a bundled name, local folder or tokenizer.json file, and not "
                                "in the local HF cache (no download without --tokenizer-download)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=not allow_download)
    except (OSError, ValueError) as exc:
        how = ("the download failed" if allow_download else
               "it is not in the local HF cache and --tokenizer-download was not given")
        raise ModelNotFound(f"tokenizer {name!r}: not a bundled name, local folder or tokenizer.json file, and "
                            f"{how} ({type(exc).__name__})") from None
