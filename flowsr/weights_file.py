"""Reading and recognising a weights file before trusting it.

Every weights file FlowSR opens is a ``.safetensors`` file (it cannot run code when read; pickles never are).
Its header is parsed and checked here without trusting it, so a pickle, a saved web page, a git-lfs pointer or
a truncated download each get a message that says what to do; the tensor names and metadata then tell what
kind of file it is (FlowSR weights, a base model, somebody else's LoRA). Loading tensors into a module checks
their names, shapes and values (NaN or infinity) and names the first tensor that is wrong. The files FlowSR
and its trainer export are written by :func:`save_weights`.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .errors import CheckpointError
from .imagefiles import write_atomically

#: The public LoRA format's metadata key (``docs/FORMAT.md``), as the released file spells it.
FLOWSR_LORA_KEY = "flowsr_checkpoint_metadata"
#: Our full-model format (models/tiny.py) marks its files with this metadata key.
FLOWSR_MODEL_KEY = "flowsr_model"

# The kinds of files ``WeightsFile.kind`` recognises.
FLOWSR_LORA = "FlowSR checkpoint (public LoRA format)"
FLOWSR_MODEL = "FlowSR full model (our small-model format)"
SD_SINGLE_FILE = "Stable Diffusion base model (single file, original LDM layout)"
DIFFUSERS_WEIGHTS = "diffusers model weights (one component of a base model folder)"
SD_LORA = "Stable Diffusion LoRA (kohya / A1111 layout), not a FlowSR checkpoint"
UNKNOWN = "safetensors file of unknown content"

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors itself refuses larger headers
Shapes = Mapping[str, tuple]


@dataclass
class WeightsFile:
    """A safetensors file whose header parsed and whose data covers every tensor (no tensor read yet)."""

    path: Path
    size: int
    tensors: dict  # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict  # the header's string-to-string "__metadata__"

    @property
    def kind(self) -> str:
        return _kind_of(self)

    def shapes(self) -> dict:
        """Every tensor's stored shape, from the header."""
        return {name: tuple(entry["shape"]) for name, entry in self.tensors.items()}

    def read(self, names: Iterable[str]) -> dict:
        """The tensors ``names``, read from disk (memory-mapped, never unpickled)."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in names}

    def non_finite(self) -> list:
        """Names of the tensors holding NaN or infinite values; reads the file one tensor at a time."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return [name for name in self.tensors if not is_finite(f.get_tensor(name))]


def read_weights_file(path: str | os.PathLike) -> WeightsFile:
    """Parse and check a safetensors header, so that a bad file gets a precise message."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the .safetensors file inside it")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; check the path")
    try:
        size, (prefix, header_size, raw_header) = path.stat().st_size, _read_header_bytes(path)
    except OSError as error:  # permissions, a file that vanished, a disk error
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None
    if len(prefix) < 8:
        raise CheckpointError(f"{path} has only {size} bytes, too few for a safetensors file; "
                              "the download failed: download it again")
    if raw_header is None:
        raise CheckpointError(_not_safetensors_message(path, prefix))
    try:
        header = json.loads(raw_header.decode("utf-8"))
        metadata = header.pop("__metadata__", None) or {}
        needed = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
    except (UnicodeDecodeError, ValueError, AttributeError, TypeError, KeyError, IndexError) as error:
        raise CheckpointError(f"{path} has a corrupt safetensors header ({type(error).__name__}: {error}); "
                              "download it again") from None
    data_size = size - 8 - header_size
    if needed > data_size:
        raise CheckpointError(f"{path} is truncated: its header describes {needed + 8 + header_size} bytes "
                              f"but the file has {size}; the download was cut short: download it again")
    return WeightsFile(path, size, header, metadata)


def _read_header_bytes(path: Path) -> tuple[bytes, int, Optional[bytes]]:
    """(first bytes, declared header size, raw header); the raw header is None when the declared size cannot
    be a safetensors header (then the first 64 bytes say what the file is)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return prefix, 0, b""
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > min(_MAX_HEADER_BYTES, size - 8):
            return prefix + f.read(56), header_size, None
        return prefix, header_size, f.read(header_size)


def _not_safetensors_message(path: Path, head: bytes) -> str:
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        what = "a pickled PyTorch file (.ckpt/.pt/.bin); FlowSR only reads .safetensors, which cannot run code"
        return f"{path} is {what}: get the .safetensors version of it"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html")):
        return f"{path} is a web page, not weights: the download saved an error page; download the file itself"
    if head.startswith(b"version https://git-lfs"):
        return f"{path} is a git-lfs pointer, not weights: run `git lfs pull` or download the file itself"
    return (f"{path} is not a safetensors file (its first bytes are {head[:16]!r}); name a .safetensors weights "
            "file, or download it again if it is one")


def _kind_of(file: WeightsFile) -> str:
    if FLOWSR_LORA_KEY in file.metadata:
        return FLOWSR_LORA
    if FLOWSR_MODEL_KEY in file.metadata:
        return FLOWSR_MODEL
    names = file.tensors.keys()
    if any(name.startswith("model.diffusion_model.") for name in names):
        return SD_SINGLE_FILE
    if any(name.startswith(("lora_unet_", "lora_te")) for name in names):
        return SD_LORA
    if any(name.startswith(("conv_in.", "down_blocks.", "encoder.down_blocks.", "text_model.")) for name in names):
        return DIFFUSERS_WEIGHTS
    return UNKNOWN


def wrong_kind_message(file: WeightsFile) -> str:
    """What a file that is not FlowSR's LoRA is, and what to do with it."""
    kind = file.kind
    if kind == SD_SINGLE_FILE:
        return (f"{file.path} looks like a base model ({kind}), not FlowSR weights: pass it as --base-model "
                "(base_model=...), and flowsr.safetensors as --checkpoint")
    if kind == DIFFUSERS_WEIGHTS:
        return (f"{file.path} looks like one component of a diffusers base model, not FlowSR weights: pass the "
                "whole folder (with unet/, vae/, text_encoder/, tokenizer/) as --base-model")
    if kind == SD_LORA:
        return f"{file.path} is a {kind}; FlowSR needs flowsr.safetensors (hub repo chunjie-spring/FlowSR)"
    if kind == FLOWSR_MODEL:
        return f"{file.path} is a {kind}; it needs no base model and loads by itself"
    return (f"{file.path} is a safetensors file without FlowSR metadata ('{FLOWSR_LORA_KEY}'); it is not FlowSR "
            "weights: get flowsr.safetensors from the hub repo chunjie-spring/FlowSR")


# --------------------------------------------------------------------------------------------- checking

def shape_problems(stored: Shapes, expected: Shapes, complete: bool = False) -> list:
    """Why tensors of ``stored`` shapes do not load into a module whose state has ``expected`` shapes.

    ``complete``: the stored tensors must cover the whole state (a full model), not only a part (a LoRA).
    """
    foreign = sorted(name for name in stored if name not in expected)
    other = sorted(name for name in stored if name in expected and tuple(stored[name]) != tuple(expected[name]))
    missing = sorted(name for name in expected if name not in stored) if complete else []
    problems = []
    if other:
        name = other[0]
        problems.append(f"{len(other)} tensors have other shapes (e.g. {name}: file {list(stored[name])}, "
                        f"model {list(expected[name])})")
    if foreign:
        problems.append(f"{len(foreign)} tensors have no place in the model (e.g. {foreign[0]})")
    if missing:
        problems.append(f"{len(missing)} tensors of the model are missing (e.g. {missing[0]})")
    return problems


def is_finite(tensor: torch.Tensor) -> bool:
    """No NaN and no infinity. ``amax`` propagates NaN, so one reduction answers (about 4x quicker on the CPU
    than ``isfinite(tensor).all()``: 0.05 s for the built-in model's 13 MB on one core)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    return bool(torch.isfinite(tensor.abs().amax()))


def non_finite_problem(names: Iterable[str]) -> list:
    """The problem of tensors with NaN or infinite values (every output would be black), if there are any."""
    names = sorted(names)
    if not names:
        return []
    return [f"{len(names)} tensors hold NaN or infinite values (e.g. {names[0]}): the weights are damaged, "
            "or come from a training run that diverged; use another file"]


def load_exactly(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, remedy: str,
                 complete: bool = False) -> None:
    """Load every tensor of ``state`` into ``module``, or raise naming the first that has no place, another
    shape or non-finite values; ``remedy`` ends the message (what the user should do)."""
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    problems = shape_problems({key: tuple(value.shape) for key, value in state.items()}, expected, complete)
    if problems:
        raise CheckpointError(f"{source} does not fit this model: {'; '.join(problems)}. {remedy}")
    problems = non_finite_problem(key for key, value in state.items() if not is_finite(value))
    if problems:
        raise CheckpointError(f"{source}: {problems[0]}")
    module.load_state_dict(dict(state), strict=complete)


def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file whole or not at all, with the mode any new file gets: ``save_file`` makes its
    files private (0o600), which a host running as another user cannot read."""
    data = safetensors_bytes(tensors, metadata=metadata)
    write_atomically(Path(path), lambda file: file.write(data))
