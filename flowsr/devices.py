"""Choosing a device and a precision, and telling when the accelerator ran out of memory."""
from __future__ import annotations

import torch

from .errors import BadInputError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise BadInputError(f"unknown device {device!r}; use auto, cuda, cuda:N, mps or cpu") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda was asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """``auto`` is bf16 on CUDA where supported, fp16 on other GPUs, fp32 on the CPU.

    Half precision on the CPU is refused: it is tens of times slower there, not faster.
    """
    device = torch.device(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise BadInputError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16") from None


def is_out_of_memory(error: BaseException) -> bool:
    """True for an accelerator's out-of-memory error, whatever the backend calls it."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(error, oom_type) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def free_memory(device: torch.device) -> int | None:
    """Bytes the device can still allocate, or None where that is unknown (CPU, MPS)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        reserved_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + reserved_unused
    return None


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
