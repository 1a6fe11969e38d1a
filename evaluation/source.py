"""Which model an evaluation scores and the run it comes from: :func:`load_source` reads ``--run``,
``--checkpoint`` or ``--export`` (:class:`~evaluation.options.EvalOptions`) into a :class:`ModelSource`.

A ``.zip`` checkpoint is a pickle and runs code when loaded, so one that this user's train.py did not
write (its sha256 is not in the trust store, :mod:`policies.trust`) is loaded only with
``--trust-checkpoint``. Without it, ``--run``'s default ``best_model.zip`` falls back to the run's ONNX
export (``export/``, with a ``warning:`` line naming it); anything else is refused. An ONNX export
(``--export``) is never unpickled.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evaluation.options import EvalOptions
from rollouts.config import load_yaml_text
from rollouts.errors import ConfigError


def locate_model(run: str | None, checkpoint: str | None, which_model: str) -> tuple[Path, Path]:
    """(run folder, model zip): ``--checkpoint`` (its run folder is ``--run``, or the train.py run
    folder it sits in), else ``--run``'s ``<which_model>_model.zip``. Nothing is read or trusted here."""
    if checkpoint:
        ck = Path(checkpoint)
        if not ck.is_file():
            raise ConfigError(f"{ck}: checkpoint not found")
        if run:
            return Path(run), ck
        return (ck.parent.parent if ck.parent.name == "checkpoints" else ck.parent), ck
    if not run:
        raise ConfigError("give --run RUN_FOLDER or --checkpoint PATH")
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: run folder not found")
    model = run_dir / f"{which_model}_model.zip"
    if not model.is_file():
        raise ConfigError(
            f"{model}: model not found (train first, or pass --model final|best / --checkpoint)"
        )
    return run_dir, model


def untrusted_fallback(opts: EvalOptions, run_dir: Path, model: Path) -> Path | None:
    """The ONNX export to evaluate instead of an untrusted ``model`` (None if the zip is trusted or
    ``--trust-checkpoint`` was given); :class:`~policies.trust.UntrustedCheckpointError` if there is
    none: only ``--run``'s best_model.zip has one (``export/`` is made from it), one-shot runs only."""
    from policies.trust import UntrustedCheckpointError, is_trusted, untrusted_message

    if opts.trust_checkpoint or is_trusted(model):
        return None
    export = run_dir / "export"
    doc: Any = None
    if not opts.checkpoint and opts.which_model == "best" and (export / "policy.json").is_file():
        try:
            doc = json.loads((export / "policy.json").read_text())
        except (OSError, ValueError):
            doc = None
    usable = isinstance(doc, dict) and doc.get("kind") != "escalate"
    if usable and Path(str((doc.get("source") or {}).get("model", ""))).name == "best_model.zip":
        return export
    raise UntrustedCheckpointError(untrusted_message(
        model, "pass --trust-checkpoint if you trust where it came from, or evaluate its ONNX export with --export DIR"
    ))


@dataclass
class ModelSource:
    """The evaluated model and the run it comes from."""

    run_dir: Path
    model_path: Path  # the zip, or the export folder
    model_meta: dict[str, Any]  # the zip's ttc_meta (env config, menu, encoder ...), or the export's part of it
    run_config: dict[str, Any]  # the run's config.yml ({} without one)
    cache: Any  # a path: --cache, else the run's config.yml, else the model's (OutcomeTable checks it)
    onnx: Any = None  # the export (policies.onnx_policy.OnnxPolicy) with --export


def load_source(opts: EvalOptions) -> ModelSource:
    """Find the model (``--run``/``--checkpoint``/``--export``), its run folder and its cache."""
    from policies.ppo import read_meta
    from policies.trust import store_path

    onnx = None
    if opts.export:  # the ONNX export: plain numbers and a graph, nothing is unpickled
        from policies.onnx_policy import OnnxPolicy

        if opts.checkpoint:
            raise ConfigError("give --export or --checkpoint, not both")
        onnx = OnnxPolicy(opts.export)
        if onnx.doc.get("kind") == "escalate":
            raise ConfigError(
                f"{opts.export}: a sequential export; evaluate its run with --run (the step policy needs the env)"
            )
        source = onnx.doc.get("source") or {}
        run_dir = Path(opts.run or source.get("run") or Path(opts.export).resolve().parent)
        model_path = Path(opts.export)
        config_path = run_dir / "config.yml"
        if not config_path.is_file():
            raise ConfigError(f"{run_dir}: config.yml not found (pass --run with the export's run folder)")
        model_meta = {"env": load_yaml_text(config_path.read_text()).get("env") or {}, "menu": onnx.menu,
                      "cache": source.get("cache")}  # fmt: skip
    else:
        run_dir, model_path = locate_model(opts.run, opts.checkpoint, opts.which_model)
        export = untrusted_fallback(opts, run_dir, model_path)
        if export is not None:  # nothing of the zip is unpickled: its run's export is evaluated instead
            print(f"warning: {model_path}: not written by your train.py (its sha256 is not in "
                  f"{store_path()}); evaluating the run's ONNX export {export} instead "
                  "(--trust-checkpoint loads the zip)", file=sys.stderr)  # fmt: skip
            return load_source(replace(opts, export=str(export), run=str(run_dir)))
        model_meta = read_meta(model_path, opts.trust_checkpoint)
    config_path, splits_path = run_dir / "config.yml", run_dir / "splits.json"
    if not splits_path.is_file():
        raise ConfigError(f"{run_dir}: splits.json not found (pass --run with the checkpoint's run folder)")
    run_config = load_yaml_text(config_path.read_text()) if config_path.is_file() else {}
    cache = opts.cache or run_config.get("cache") or model_meta.get("cache")
    return ModelSource(run_dir, model_path, model_meta, run_config, cache, onnx)
