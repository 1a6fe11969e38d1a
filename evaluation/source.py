"""Which model an evaluation scores and the run it comes from: :func:`load_source` reads ``--run``,
``--checkpoint`` or ``--export`` (:class:`~evaluation.options.EvalOptions`) into a :class:`ModelSource`.

A ``.zip`` checkpoint is a pickle and runs code when loaded, so :func:`locate_model` refuses one from
outside its run folder unless trusted; an ONNX export (``--export``) is never unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.options import EvalOptions
from rollouts.config import load_yaml_text
from rollouts.errors import ConfigError


def locate_model(
    run: str | None, checkpoint: str | None, which_model: str, trust_checkpoint: bool = False
) -> tuple[Path, Path]:
    """(run folder, model zip). A ``.zip`` is unpickled on loading, so one that is not inside the run
    folder (``--run``, or the train.py run folder it sits in) needs ``trust_checkpoint``."""
    if checkpoint:
        ck = Path(checkpoint)
        if not ck.is_file():
            raise ConfigError(f"{ck}: checkpoint not found")
        if run:
            run_dir = Path(run)
        else:
            run_dir = ck.parent.parent if ck.parent.name == "checkpoints" else ck.parent
        inside = ck.resolve().is_relative_to(run_dir.resolve()) and (run_dir / "command.txt").is_file()
        if not (inside or trust_checkpoint):
            raise ConfigError(
                f"{ck}: checkpoint outside the run folder {run_dir}; a .zip checkpoint runs code when loaded, "
                "so pass --trust-checkpoint if you made it yourself, or evaluate its ONNX export with --export DIR"
            )
        return run_dir, ck
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
        run_dir, model_path = locate_model(opts.run, opts.checkpoint, opts.which_model, opts.trust_checkpoint)
        model_meta = read_meta(model_path)
    config_path, splits_path = run_dir / "config.yml", run_dir / "splits.json"
    if not splits_path.is_file():
        raise ConfigError(f"{run_dir}: splits.json not found (pass --run with the checkpoint's run folder)")
    run_config = load_yaml_text(config_path.read_text()) if config_path.is_file() else {}
    cache = opts.cache or run_config.get("cache") or model_meta.get("cache")
    return ModelSource(run_dir, model_path, model_meta, run_config, cache, onnx)
