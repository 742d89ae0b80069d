"""GRPO checkpoints: a Hugging Face model directory plus the training state needed to continue from it.

A checkpoint directory holds what `save_pretrained` writes (`model.safetensors`, `config.json`,
`generation_config.json`) and what the tokenizer writes (`tokenizer.json`, `tokenizer_config.json`, the chat
template), so `transformers.AutoModelForCausalLM.from_pretrained(DIR)`, `agl.llm.model.load_model(DIR)` and the
model server (`python -m agl.llm.server --model DIR`) all load it. Next to them, `agl_checkpoint.json` records the
step it was taken at, its held-out score and the run's history and settings (`CheckpointState`).

Directories are written next to their final place and moved in, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["STATE_FILE", "CheckpointState", "clone_state_dict", "find_checkpoint", "read_state", "save_checkpoint"]

STATE_FILE = "agl_checkpoint.json"
"""The training-state file inside a checkpoint directory."""


@dataclass
class CheckpointState:
    """Where training stood when a checkpoint was taken."""

    step: int
    """The last GRPO step whose update the weights include (0: the weights training started from)."""
    weights_version: str
    score: float | None
    """The held-out success of these weights (None when not evaluated)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Every `StepLog` of the run up to this checkpoint, as dicts."""
    config: dict[str, Any] = field(default_factory=dict)
    """The `GRPOConfig` of the run that wrote it."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What the caller attached (the demo records its task split here, so a resumed run keeps the same one)."""


def clone_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's weights; tensors that share storage (tied embeddings) stay shared.

    On the CPU so a kept copy (GRPO's best weights) costs host memory, not the GPU memory training needs.
    """
    copies: dict[int, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key not in copies:
            copies[key] = tensor.detach().to("cpu", copy=True)
        out[name] = copies[key]
    return out


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: Any,
    tokenizer: Any,
    state: CheckpointState,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model` (or `weights`, a state dict for its architecture) with `tokenizer` and `state` to `directory`.

    An existing checkpoint there is replaced whole. Returns the directory.
    """
    import torch

    target = Path(directory).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # an ordinary directory, not mkdtemp's private 0700
    try:
        if weights is None:
            model.save_pretrained(str(staging))
        else:
            # The served model may be training meanwhile: write the given snapshot, with the model's config.
            with torch.no_grad():
                model.save_pretrained(str(staging), state_dict=dict(weights))  # it drops tied names in place
        tokenizer.save_pretrained(str(staging))
        (staging / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        if target.exists():
            previous = target.with_name(f".{target.name}.old")
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(target, previous)
            os.replace(staging, target)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory `path` names: itself, or its `best/` subdirectory (an output directory).

    Raises `FileNotFoundError` naming what is missing.
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise FileNotFoundError(f"the checkpoint {str(path)!r} does not exist")
    for candidate in (given, given / "best"):
        if (candidate / STATE_FILE).is_file() and (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"{str(path)!r} is not a checkpoint: expected {STATE_FILE} and config.json in it or in its best/ "
        "subdirectory (give a demo output directory or one of its checkpoint directories)"
    )


def read_state(directory: str | os.PathLike[str]) -> CheckpointState:
    """The training state saved in a checkpoint directory (`ValueError` when the file is not one)."""
    path = Path(directory) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        return CheckpointState(
            step=int(raw["step"]),
            weights_version=str(raw["weights_version"]),
            score=None if raw.get("score") is None else float(raw["score"]),
            history=list(raw.get("history") or []),
            config=dict(raw.get("config") or {}),
            extra=dict(raw.get("extra") or {}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{str(path)!r} is not a valid checkpoint state ({type(exc).__name__}: {exc})") from None
