"""Choosing a device and a precision, how much memory it has free, and telling when it ran out."""
from __future__ import annotations

import psutil
import torch

from .errors import BadInputError

try:
    import resource  # Unix only: address-space limits
except ImportError:
    resource = None

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

    ``fp16`` on the CPU is refused: PyTorch has few fp16 CPU kernels, and it ran 3.4x to 50x slower than fp32
    there (bf16, which has them, is allowed; ``torch.float16`` passed from code is taken as given).
    """
    device = torch.device(device)
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    elif dtype in DTYPES:
        resolved = DTYPES[dtype]
    else:
        raise BadInputError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16")
    if dtype == "fp16" and device.type == "cpu":  # a user's choice; a torch.dtype from code is taken as given
        raise BadInputError("fp16 on the CPU is many times slower than fp32, not faster; use fp32 (or auto, which "
                            "is fp32 on the CPU)")
    return resolved


#: How PyTorch's allocators word running out: CUDA and MPS ("out of memory"), the CPU's DefaultCPUAllocator
#: ("not enough memory: you tried to allocate ..."), the C library's ENOMEM, and oneDNN, whose convolutions
#: fail to "create a primitive" when their workspace cannot be allocated (seen under ``ulimit -v``).
_OUT_OF_MEMORY_WORDS = ("out of memory", "not enough memory", "cannot allocate memory", "can't allocate memory",
                        "could not create a primitive")


def is_out_of_memory(error: BaseException) -> bool:
    """True for running out of memory on any device (CUDA, MPS, the CPU), whatever the backend calls it."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(error, (MemoryError, oom_type)) or (
        isinstance(error, RuntimeError) and any(words in str(error).lower() for words in _OUT_OF_MEMORY_WORDS))


def free_memory(device: torch.device) -> int | None:
    """Bytes the device can still allocate, or None where that is unknown (MPS).

    On the CPU: the memory the system has available, less where this process's address-space limit
    (``ulimit -v``) leaves less room.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        reserved_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + reserved_unused
    if device.type == "cpu":
        available = psutil.virtual_memory().available
        limit = resource.getrlimit(resource.RLIMIT_AS)[0] if resource is not None else -1
        if limit not in (-1, getattr(resource, "RLIM_INFINITY", -1)):
            available = min(available, max(0, limit - psutil.Process().memory_info().vms))
        return available
    return None


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
