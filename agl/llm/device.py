"""Where a model runs and in which dtype: the one place AGL chooses between CPU and CUDA.

Device names: `"auto"` (CUDA when `torch.cuda.is_available()`, else CPU), `"cpu"`, `"cuda"` (the current CUDA
device) or `"cuda:N"`. Asking for CUDA where torch sees none raises `DeviceError` naming the option and the fix.

Dtypes: `"auto"`/`None` picks per device and use. For serving: fp32 on CPU (CPU kernels for half precision are slow
or missing), bf16 on a CUDA device that supports it (fp32's exponent range, so no overflow, half the memory), else
fp16. For training (the weights the optimizer updates in place): fp32 everywhere, because a step of
`learning_rate * update` at GRPO's learning rates (~1e-5 of a weight) is below bf16's resolution (8 significant
bits: neighbouring values differ by 0.4-0.8 %) and would mostly round away. Explicit names: `"float32"`/`"fp32"`, `"bfloat16"`/`"bf16"`, `"float16"`/`"fp16"`.

Compute dtype (`compute_context`): the weights keep their dtype while matrix products run in a lower precision
(torch autocast). On a CPU with AVX512-BF16 or AMX, bf16 products are several times faster than fp32 ones.

torch is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEVICE_HELP",
    "DTYPE_NAMES",
    "DeviceError",
    "compute_context",
    "default_dtype",
    "model_device",
    "resolve_device",
    "resolve_dtype",
]

DEVICE_HELP = '"auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"'
"""The accepted device names, for option help texts and error messages."""

DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
"""Accepted dtype names and the torch dtype each one means."""


class DeviceError(ValueError):
    """A device or dtype that cannot be used here (the message names the option and how to fix it)."""


def resolve_device(device: str | torch.device | None = "auto", *, option: str = "device") -> torch.device:
    """The `torch.device` that `device` names (see the module docstring); `None` means `"auto"`.

    `option` is how the caller's user spells the setting (e.g. `"--device"`), so the error names it.
    Raises `DeviceError` for an unknown name and for a CUDA device torch cannot use here, and ImportError naming
    the extra to install when torch is missing.
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"{option} needs torch, which is not installed: pip install 'agl[llm]'") from exc

    if isinstance(device, torch.device):
        name = str(device)
    elif device is None:
        name = "auto"
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise DeviceError(f"{option} must be a string, one of {DEVICE_HELP}; got {type(device).__name__}")
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    kind, colon, index_text = name.partition(":")
    if kind != "cuda" or (colon and not index_text.isdigit()):
        raise DeviceError(f"{option}={device!r} is not a device AGL uses; give {DEVICE_HELP}")
    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(
            f"{option}={device!r} asks for a CUDA GPU, but torch sees none (torch {torch.__version__}, {build}). "
            f"Use {option}=cpu or {option}=auto, or run on a machine with an NVIDIA GPU and a CUDA build of torch"
        )
    if not index_text:
        return torch.device("cuda")
    index, count = int(index_text), torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"{option}={device!r}: there is no CUDA device {index}; torch sees {count} (cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def default_dtype(device: torch.device, *, training: bool = False) -> torch.dtype:
    """The dtype AGL uses on `device` when none is given: fp32 on CPU and for training; bf16 or fp16 to serve on CUDA."""
    import torch

    if training or device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resolve_dtype(
    dtype: str | torch.dtype | None, device: torch.device, *, training: bool = False, option: str = "dtype"
) -> torch.dtype:
    """The torch dtype `dtype` names; `None` or `"auto"` gives `default_dtype(device, training=training)`."""
    import torch

    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise DeviceError(
                f"{option}={dtype} is not a floating dtype AGL loads models in; give float32, bfloat16, float16 or auto"
            )
        return dtype
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return default_dtype(device, training=training)
    name = DTYPE_NAMES.get(dtype.strip().lower()) if isinstance(dtype, str) else None
    if name is None:
        raise DeviceError(f"{option}={dtype!r} is not a dtype AGL knows; give auto, float32, bfloat16 or float16")
    resolved: torch.dtype = getattr(torch, name)
    return resolved


def compute_context(compute_dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """A context in which `device`'s matrix products run in `compute_dtype` (torch autocast); `None` or float32: none."""
    import torch

    if compute_dtype is None or compute_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=compute_dtype)


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    import torch

    for parameter in model.parameters():
        device: torch.device = parameter.device
        return device
    return torch.device("cpu")
