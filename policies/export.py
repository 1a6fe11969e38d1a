"""Export a trained MaskablePPO policy to ONNX, with an onnxruntime parity check.

``export_policy(model, out_dir)`` writes ``policy.onnx`` and ``policy.json`` and returns the parity
report. The graph takes ``obs`` (float32 [batch, obs_dim], built as in :class:`policies.observation.ObsEncoder`)
and ``mask`` (bool [batch, n_actions]) and returns ``logits`` (float32, masked entries -1e8, as
sb3-contrib's masked distribution does) and ``action`` (int64 argmax: the deterministic choice).
``policy.json`` holds what an SB3-free caller needs to build ``obs`` (see :mod:`policies.onnx_policy`).

``train.py`` exports the run's ``best_model.zip`` to ``<run>/export/``. Any other checkpoint::

    python -m policies.export runs/<name>/final_model.zip runs/<name>/export_final
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from policies.observation import ObsEncoder
from rollouts.errors import LIBRARY_INPUT_ERRORS, TTCError, report

JSON_FORMAT = "ttc-alloc/onnx-policy"
MASK_VALUE = -1e8


class ExportError(TTCError):
    """The exported graph disagrees with the SB3 policy."""


def _actor(model):
    import torch

    policy = model.policy

    class Actor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.policy = policy

        def forward(self, obs, mask):
            feats = self.policy.extract_features(obs, self.policy.pi_features_extractor)
            latent = self.policy.mlp_extractor.forward_actor(feats)
            logits = self.policy.action_net(latent)
            logits = torch.where(mask, logits, torch.full_like(logits, MASK_VALUE))
            return logits, torch.argmax(logits, dim=-1)

    return Actor().eval()


def serving_spec(table) -> dict[str, Any] | None:
    """What live routing (``route.py``) must reproduce from the collection, read from the cache meta:
    model, sampling, scorer, seed, featurizer, and per action id the strategy run that realises it.
    None when the cache was not made by this collector (an import: its rollouts came from another
    pipeline, which nothing here can reproduce), lacks one of those records, or has an action that
    is neither a pool budget nor one of its beam configs."""
    meta = table.meta
    if meta.get("source") == "import" or not all(
        k in meta for k in ("model", "sampling", "scorer", "featurizer")
    ):
        return None
    from rollouts.strategies import BEAM, PoolSpec, RaceSpec, StrategySpec, parse_strategy

    # the collection menu's beam configs; a pool action is a pool run of its budget
    beams = {s.config_id: s for s in (parse_strategy(m) for m in meta.get("menu", []) if m.get("strategy") == BEAM)}
    actions: dict[str, Any] = {}
    for a in table.menu:
        run: StrategySpec | None = PoolSpec(a.n) if a.is_budget else beams.get(a.config_id)
        if a.race is not None:
            run = RaceSpec(a.n, a.race.k, a.race.rule)
        if run is None:
            return None
        actions[a.id] = run.serving_action(a.selector)
    return {
        "model": meta["model"],
        "backend": (meta.get("backend") or {}).get("backend", "vllm"),
        "sampling": meta["sampling"],
        "scorer": meta["scorer"],
        "seed": meta.get("seed", 0),
        "featurizer": meta["featurizer"],
        "actions": actions,
    }


def export_policy(
    model,
    out_dir: str | Path,
    source: dict[str, Any] | None = None,
    n_check: int = 512,
    seed: int = 0,
    serving: dict[str, Any] | None = None,
    gate=None,
    sequential_gate=None,
) -> dict[str, Any]:
    """``gate`` (a :class:`policies.gate.Gate`) goes into policy.json: :mod:`policies.onnx_policy`
    plays its fallback where it is closed. ``model`` must already carry the gate's shrinkage.
    ``sequential_gate`` (a :class:`policies.sequential_gate.SequentialGate`, sequential runs): live
    routing plays its floor where it is closed (:mod:`policies.sequential_router`)."""
    import torch

    meta = model.ttc_meta
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc = ObsEncoder.from_dict(meta["encoder"])
    obs_dim = int(model.observation_space.shape[0])
    n_actions = int(model.action_space.n)
    actor = _actor(model)
    onnx_path = out / "policy.onnx"
    dummy = (torch.zeros(2, obs_dim), torch.ones(2, n_actions, dtype=torch.bool))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            actor,
            dummy,
            str(onnx_path),
            dynamo=False,
            input_names=["obs", "mask"],
            output_names=["logits", "action"],
            dynamic_axes={
                "obs": {0: "batch"},
                "mask": {0: "batch"},
                "logits": {0: "batch"},
                "action": {0: "batch"},
            },
            opset_version=17,
        )
    parity = parity_check(model, onnx_path, n_check=n_check, seed=seed)
    doc = {
        "format": JSON_FORMAT,
        "version": 1,
        "onnx": onnx_path.name,
        "inputs": {"obs": ["batch", obs_dim], "mask": ["batch", n_actions]},
        "outputs": {"logits": ["batch", n_actions], "action": ["batch"]},
        "menu": list(meta["menu"]),
        "menu_names": list(meta["menu_names"]),
        "observation": enc.to_export_dict(),
        "penalties": {
            "observed": enc.sample_penalties,
            "fixed": None
            if enc.sample_penalties
            else [meta["env"]["lambda_tokens"], meta["env"]["lambda_seconds"]],
            "lambda_tokens_range": meta["env"].get("lambda_tokens_range"),
            "lambda_seconds_range": meta["env"].get("lambda_seconds_range"),
        },
        "parity": parity,
        "source": source or {},
        "serving": serving,
        "gate": None if gate is None else gate.to_dict(),
    }
    if meta.get("kind") == "escalate":  # a sequential step policy: its menu is the step menu
        from policies.escalate_ppo import export_fields

        doc.update(export_fields(meta))
        doc["sequential_gate"] = None if sequential_gate is None else sequential_gate.to_dict()
    (out / "policy.json").write_text(json.dumps(doc, indent=1) + "\n")
    return parity


def parity_check(
    model, onnx_path: str | Path, n_check: int = 512, seed: int = 0, atol: float = 1e-4
) -> dict[str, Any]:
    """Compare onnxruntime's logits and actions with the SB3 policy on random observations and masks."""
    import onnxruntime as ort
    import torch

    obs_dim = int(model.observation_space.shape[0])
    n_actions = int(model.action_space.n)
    rng = np.random.default_rng(seed)
    obs = rng.normal(0, 1.5, size=(n_check, obs_dim)).astype(np.float32)
    mask = rng.random((n_check, n_actions)) < 0.7
    mask[np.arange(n_check), rng.integers(0, n_actions, n_check)] = True
    mask[: n_check // 4] = True
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits_onnx, act_onnx = sess.run(["logits", "action"], {"obs": obs, "mask": mask})
    with torch.no_grad():
        dist = model.policy.get_distribution(torch.as_tensor(obs), action_masks=mask)
        probs_sb3 = dist.distribution.probs.numpy()
    act_sb3, _ = model.predict(obs, action_masks=mask, deterministic=True)
    # SB3 normalises logits (log-softmax); compare the softmax over legal actions and the argmax
    probs_onnx = _softmax(logits_onnx.astype(np.float64))
    diff = float(np.abs(probs_onnx - probs_sb3).max())
    same = int((np.asarray(act_sb3) == act_onnx).sum())
    report = {
        "n": n_check,
        "max_abs_prob_diff": diff,
        "actions_equal": same,
        "ok": bool(diff <= atol and same == n_check),
    }
    if not report["ok"]:
        raise ExportError(
            f"ONNX parity check failed: {n_check - same}/{n_check} actions differ, max |Δp| = {diff:.2e} (> {atol:g})"
        )
    return report


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export a ttc-alloc checkpoint to ONNX (parity-checked).")
    p.add_argument("checkpoint", help="a .zip saved by train.py (best_model, final_model or checkpoints/...)")
    p.add_argument("out", help="output folder for policy.onnx + policy.json (must not hold an export yet)")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load a zip your train.py did not write (a .zip runs code when loaded; policies/trust.py)",
    )
    args = p.parse_args(argv)
    from policies.ppo import load_model

    ck, out = Path(args.checkpoint), Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty; choose another folder", file=sys.stderr)
        return 2
    partial = out.parent / f".{out.name}.partial"  # renamed into place only once the parity check passed
    shutil.rmtree(partial, ignore_errors=True)
    try:
        # a missing file or a non-ttc-alloc zip raises CheckpointError, one this user's train.py did not
        # write UntrustedCheckpointError (before anything of it is unpickled)
        model = load_model(ck, trust=args.trust_checkpoint)
        serving = None
        cache = model.ttc_meta.get("cache")
        if cache and Path(cache).is_dir():
            from env.allocate_env import stored_env_dict
            from env.outcomes import OutcomeTable
            from policies.ppo import check_menu

            table = OutcomeTable(cache, races=stored_env_dict(model.ttc_meta.get("env"))["races"])
            check_menu(model.ttc_meta, table, str(ck))
            serving = serving_spec(table)
        else:
            print(
                f"warning: the training cache {cache!r} is not here; the export has no serving spec "
                "(route.py needs one)",
                file=sys.stderr,
            )
        parity = export_policy(
            model, partial, source={"model": str(ck), "timesteps": int(model.num_timesteps)}, serving=serving
        )
        if out.exists():
            out.rmdir()  # empty (checked above)
        partial.rename(out)
    # ValueError besides TTCError (itself one): plain ones below the export are bad input too (rollouts/errors.py)
    except LIBRARY_INPUT_ERRORS as exc:
        shutil.rmtree(partial, ignore_errors=True)
        return report(exc)
    print(
        f"exported {ck} -> {out}/policy.onnx (parity: {parity['actions_equal']}/{parity['n']} actions equal)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
