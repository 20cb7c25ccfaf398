"""The public ``flowsr.safetensors`` format: read, check, apply to SD 2.1, and write (FLOWSR.md section 2).

A file holds LoRA tensors (and possibly whole weights such as a fine-tuned ``conv_in``) for the UNet and,
optionally, the VAE encoder. Its header metadata key ``flowsr_checkpoint_metadata`` holds JSON::

    {"fields": {"unet_rank": 4, "unet_lora_target_modules": [...] or "regex",
                "vae_rank": 16, "vae_lora_target_modules": [...]},          # vae fields optional
     "tensor_names": {"unet_state_dict": {tensor_key: state_dict_key, ...},
                      "vae_state_dict": {...}}}

Applying it: peft's ``LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=...)`` with
``lora_alpha`` left at peft's default of 8, so the LoRA update is scaled by ``8 / rank``; the UNet's adapter
is named ``default``, the VAE's ``vae_skip`` (its stored keys say ``.default.`` where the module has
``.vae_skip.``). Then every stored tensor is loaded at its state-dict key; one that has no place in the
module, or a different shape, means the file was made for another base model, and loading stops.
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch
from torch import nn

from .errors import CheckpointError

METADATA_KEY = "flowsr_checkpoint_metadata"
#: Our own full-model format (see models/tiny.py) marks its files with this metadata key.
MODEL_METADATA_KEY = "flowsr_model"
UNET_ADAPTER = "default"
VAE_ADAPTER = "vae_skip"
#: peft's default ``lora_alpha``; the public weights rely on it (their config does not set one).
PEFT_DEFAULT_LORA_ALPHA = 8

#: Cross-attention width (the text encoder's hidden size) of the Stable Diffusion families.
CROSS_ATTENTION_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
BASE_MODEL_HELP = ("FlowSR needs Stable Diffusion 2.1-base: a diffusers folder (e.g. the hub repo "
                   "Manojb/stable-diffusion-2-1-base) or the single file v2-1_512-ema-pruned.safetensors")

TargetModules = Union[str, list]

# Kinds of files `inspect_file` recognises.
FLOWSR_LORA = "FlowSR checkpoint (public LoRA format)"
FLOWSR_MODEL = "FlowSR full model (our small-model format)"
SD_SINGLE_FILE = "Stable Diffusion base model (single file, original LDM layout)"
DIFFUSERS_WEIGHTS = "diffusers model weights (one component of a base model folder)"
SD_LORA = "Stable Diffusion LoRA (kohya / A1111 layout), not a FlowSR checkpoint"
UNKNOWN = "safetensors file of unknown content"

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors itself refuses larger headers


@dataclass
class SafetensorsFile:
    """A safetensors file whose header parsed and whose data covers every tensor."""

    path: Path
    size: int
    tensors: dict  # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict  # the header's string-to-string "__metadata__"

    @property
    def kind(self) -> str:
        return _kind_of(self)


@dataclass
class LoraWeights:
    """One module's part of a checkpoint: the LoRA config and the tensors at their state-dict keys."""

    rank: int
    target_modules: TargetModules
    tensor_names: dict  # state_dict key -> tensor key in the file

    @property
    def lora_alpha(self) -> int:
        return PEFT_DEFAULT_LORA_ALPHA

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.rank


@dataclass
class FlowSRCheckpoint:
    """A parsed public-format file; tensors are read from disk only when applied."""

    file: SafetensorsFile
    unet: LoraWeights
    vae: Optional[LoraWeights] = None
    problems: list = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.file.path

    def tensors(self, part: LoraWeights) -> dict:
        """The stored tensors of ``part`` keyed by where they belong in the module's state dict."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return {key: f.get_tensor(name) for key, name in part.tensor_names.items()}


# --------------------------------------------------------------------------------------------- reading

def read_safetensors_header(path: str | os.PathLike) -> SafetensorsFile:
    """Parse and check a safetensors header without trusting it, so a bad file gets a precise message."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the .safetensors file inside it")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; check the path")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} has only {size} bytes, too few for a safetensors file; "
                                  "the download failed: download it again")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > min(_MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(_not_safetensors_message(path, prefix + f.read(56)))
        raw_header = f.read(header_size)
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
    return SafetensorsFile(path, size, header, metadata)


def _not_safetensors_message(path: Path, head: bytes) -> str:
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        what = "a pickled PyTorch file (.ckpt/.pt/.bin); FlowSR only reads .safetensors, which cannot run code"
        return f"{path} is {what}: get the .safetensors version of it"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html")):
        return f"{path} is a web page, not weights: the download saved an error page; download the file itself"
    if head.startswith(b"version https://git-lfs"):
        return f"{path} is a git-lfs pointer, not weights: run `git lfs pull` or download the file itself"
    return f"{path} is not a safetensors file (its first bytes are {head[:16]!r}); download it again"


def _kind_of(file: SafetensorsFile) -> str:
    if METADATA_KEY in file.metadata:
        return FLOWSR_LORA
    if MODEL_METADATA_KEY in file.metadata:
        return FLOWSR_MODEL
    names = file.tensors.keys()
    if any(name.startswith("model.diffusion_model.") for name in names):
        return SD_SINGLE_FILE
    if any(name.startswith(("lora_unet_", "lora_te")) for name in names):
        return SD_LORA
    if any(name.startswith(("conv_in.", "down_blocks.", "encoder.down_blocks.", "text_model.")) for name in names):
        return DIFFUSERS_WEIGHTS
    return UNKNOWN


def read_checkpoint(path: str | os.PathLike) -> FlowSRCheckpoint:
    """Parse a public-format file and check it; any problem is a :class:`CheckpointError`."""
    checkpoint = parse_checkpoint(read_safetensors_header(path))
    if checkpoint.problems:
        raise CheckpointError(f"{checkpoint.path} is not a usable FlowSR checkpoint: "
                              + "; ".join(checkpoint.problems))
    return checkpoint


def parse_checkpoint(file: SafetensorsFile) -> FlowSRCheckpoint:
    """Read the FlowSR metadata of ``file``, collecting (not raising) what is wrong with it."""
    if file.kind != FLOWSR_LORA:
        raise CheckpointError(wrong_kind_message(file))
    try:
        payload = json.loads(file.metadata[METADATA_KEY])
        fields, groups = payload.get("fields", {}), payload.get("tensor_names", {})
    except (ValueError, AttributeError) as error:
        raise CheckpointError(f"{file.path} has corrupt FlowSR metadata ({error}); download it again") from None
    problems: list = []
    unet = _parse_part(file, fields, groups, "unet", problems)
    vae = _parse_part(file, fields, groups, "vae", problems)
    if unet is None:
        problems.append("it holds no UNet weights ('unet_rank' and 'unet_state_dict' are required)")
        unet = LoraWeights(1, [], {})
    return FlowSRCheckpoint(file, unet, vae, problems)


def _parse_part(file: SafetensorsFile, fields: dict, groups: dict, part: str,
                problems: list) -> Optional[LoraWeights]:
    rank, targets = fields.get(f"{part}_rank"), fields.get(f"{part}_lora_target_modules")
    names = groups.get(f"{part}_state_dict") or {}
    if not names:  # like the reference, a part whose rank is set but whose tensors are absent is skipped
        return None
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        problems.append(f"'{part}_rank' is {rank!r}, not a positive integer")
        return None
    if not (isinstance(targets, str) or (isinstance(targets, list) and targets
                                          and all(isinstance(t, str) for t in targets))):
        problems.append(f"'{part}_lora_target_modules' is {targets!r}, not a list of module names or a regex")
        return None
    absent = [name for name in names if name not in file.tensors]
    if absent:
        problems.append(f"the metadata names {len(absent)} {part} tensors the file does not hold "
                        f"(e.g. {absent[0]!r}); the file is damaged: download it again")
    stored = {key: name for name, key in names.items() if name in file.tensors}
    if part == "vae":
        stored = {_to_vae_adapter(key): name for key, name in stored.items()}
    adapter = UNET_ADAPTER if part == "unet" else VAE_ADAPTER
    for key, name in stored.items():
        shape = file.tensors[name]["shape"]
        if f".lora_A.{adapter}." in key and shape[0] != rank:
            problems.append(f"{part} tensor {key} has rank {shape[0]} but the metadata says {part}_rank={rank}")
            break
    return LoraWeights(rank, targets, stored)


def _to_vae_adapter(key: str) -> str:
    return key.replace(f".{UNET_ADAPTER}.", f".{VAE_ADAPTER}.")


def wrong_kind_message(file: SafetensorsFile) -> str:
    """What a non-FlowSR file is, and what to do with it."""
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
    return (f"{file.path} is a safetensors file without FlowSR metadata ('{METADATA_KEY}'); it is not FlowSR "
            "weights: get flowsr.safetensors from the hub repo chunjie-spring/FlowSR")


# -------------------------------------------------------------------------------------------- applying

def add_lora(module: nn.Module, rank: int, target_modules: TargetModules, adapter_name: str) -> nn.Module:
    """Inject a LoRA adapter exactly as the public weights were trained with (``lora_alpha`` left at 8).

    peft's ``inject_adapter_in_model`` is what diffusers' ``add_adapter`` calls, and it also works on the
    ``AutoencoderKL`` of diffusers 0.31, which has no ``add_adapter``.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=target_modules)
    try:
        inject_adapter_in_model(config, module, adapter_name=adapter_name)
    except ValueError as error:  # peft: "Target modules ... not found in the base model"
        raise CheckpointError(f"the checkpoint's LoRA targets do not exist in this {type(module).__name__} "
                              f"({error}); it was made for another architecture. {BASE_MODEL_HELP}") from None
    return module


def apply_checkpoint(checkpoint: FlowSRCheckpoint, unet: nn.Module, vae: nn.Module, merge: bool = True) -> None:
    """Add the checkpoint's adapters to ``unet`` and ``vae`` and load all of its tensors into them.

    ``merge`` folds each LoRA into its base weight (``W + 8/r B A``) and removes the peft layers, so
    inference runs plain diffusers modules at full speed. Merging happens on the weights as loaded (fp32
    on the CPU, before any cast to half precision), where it equals the unmerged model to fp32 rounding;
    the trainer passes ``merge=False`` to keep training the adapters.
    """
    parts = [(unet, checkpoint.unet, UNET_ADAPTER, "UNet")]
    if checkpoint.vae is not None:
        parts.append((vae, checkpoint.vae, VAE_ADAPTER, "VAE"))
    for module, part, adapter, name in parts:
        _check_fits(checkpoint, module, part, name)
        add_lora(module, part.rank, part.target_modules, adapter)
        load_exactly(module, checkpoint.tensors(part), f"{checkpoint.path} ({name})")
        if merge:
            merge_lora(module)


def _check_fits(checkpoint: FlowSRCheckpoint, module: nn.Module, part: LoraWeights, name: str) -> None:
    """Refuse a checkpoint for another base model before touching the module, naming the mismatch."""
    theirs = _cross_attention_width(checkpoint.file, part)
    ours = getattr(getattr(module, "config", None), "cross_attention_dim", None)
    if name == "UNet" and theirs is not None and ours is not None and theirs != ours:
        raise CheckpointError(
            f"{checkpoint.path} was made for a base model with cross-attention width {theirs} "
            f"({CROSS_ATTENTION_FAMILIES.get(theirs, 'unknown family')}), but the base model given has "
            f"{ours} ({CROSS_ATTENTION_FAMILIES.get(ours, 'unknown family')}). {BASE_MODEL_HELP}")


def _cross_attention_width(file: SafetensorsFile, part: LoraWeights) -> Optional[int]:
    """The text-embedding width the file's cross-attention LoRA reads, when it has one."""
    for key, name in part.tensor_names.items():
        if re.search(r"\.attn2\.to_[kv]\.lora_A\.", key):
            return int(file.tensors[name]["shape"][1])
    return None


def load_exactly(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every tensor of ``state`` into ``module``; any that has no place or another shape is an error."""
    own = module.state_dict()
    unexpected = sorted(key for key in state if key not in own)
    mismatched = sorted((key, tuple(state[key].shape), tuple(own[key].shape))
                        for key in state if key in own and state[key].shape != own[key].shape)
    if unexpected or mismatched:
        details = []
        if mismatched:
            key, stored, expected = mismatched[0]
            details.append(f"{len(mismatched)} tensors have other shapes (e.g. {key}: file {list(stored)}, "
                           f"model {list(expected)})")
        if unexpected:
            details.append(f"{len(unexpected)} tensors have no place in the model (e.g. {unexpected[0]})")
        raise CheckpointError(f"{source} does not fit this base model: {'; '.join(details)}. {BASE_MODEL_HELP}")
    module.load_state_dict(dict(state), strict=False)


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA layer of ``module`` into its base layer and put the base layer back in its place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in list(module.named_modules()):
        if isinstance(layer, BaseTunerLayer):
            layer.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, child, layer.get_base_layer())
    return module


# ------------------------------------------------------------------------------------------- reporting

@dataclass
class CheckpointReport:
    """What ``python -m flowsr check FILE`` prints; ``problems`` empty means the file is usable."""

    lines: list
    problems: list

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def text(self) -> str:
        problems = [f"  - {p}" for p in self.problems] or ["  none"]
        return "\n".join(self.lines + ["problems:"] + problems)


def check(path: str | os.PathLike) -> CheckpointReport:
    """Inspect any weights file; raises :class:`CheckpointError` only when it cannot be read at all."""
    file = read_safetensors_header(path)
    lines = [f"{file.path}: {file.kind}", f"  {len(file.tensors)} tensors, {_megabytes(file.size)} MB, "
             f"dtypes {', '.join(sorted({entry['dtype'] for entry in file.tensors.values()}))}"]
    if file.kind == FLOWSR_MODEL:
        return CheckpointReport(lines + [f"  metadata: {file.metadata[MODEL_METADATA_KEY]}",
                                         "  needs no base model"], [])
    if file.kind != FLOWSR_LORA:
        return CheckpointReport(lines, [wrong_kind_message(file)])
    checkpoint = parse_checkpoint(file)
    for name, part, adapter in (("UNet", checkpoint.unet, UNET_ADAPTER), ("VAE", checkpoint.vae, VAE_ADAPTER)):
        if part is None:
            lines.append(f"{name} LoRA: none")
            continue
        lora = [key for key in part.tensor_names if f".{adapter}." in key]
        others = sorted(set(part.tensor_names) - set(lora))
        lines += [f"{name} LoRA (adapter '{adapter}'): rank {part.rank}, lora_alpha {part.lora_alpha} "
                  f"(peft's default; scaling {part.scaling:g})",
                  f"  target modules: {_describe_targets(part.target_modules)}",
                  f"  {len(part.tensor_names)} tensors: {len(lora)} LoRA, {len(others)} whole weights"
                  + (f" ({', '.join(others[:6])}{', ...' if len(others) > 6 else ''})" if others else "")]
    width = _cross_attention_width(file, checkpoint.unet)
    if width is None:
        lines.append("expects base model: SD 2.1-base (the file does not show its cross-attention width)")
    else:
        family = CROSS_ATTENTION_FAMILIES.get(width, "unknown family")
        lines.append(f"expects base model: {family} (cross-attention width {width})")
        if width in CROSS_ATTENTION_FAMILIES and width != 1024:
            checkpoint.problems.append(f"made for {family} (width {width}), but FlowSR runs on SD 2.1-base "
                                       "(width 1024): this file will not load")
    return CheckpointReport(lines, checkpoint.problems)


def describe(path: str | os.PathLike) -> str:
    """A human-readable summary of a weights file and of the problems found in it."""
    return check(path).text


def _describe_targets(targets: TargetModules) -> str:
    if isinstance(targets, str):
        return f"regex {targets!r}"
    shown = ", ".join(targets[:12])
    return f"{len(targets)} names: {shown}{', ...' if len(targets) > 12 else ''}"


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f}"


# --------------------------------------------------------------------------------------------- writing

def lora_state_dict(module: nn.Module, adapter_name: str, whole_weights: Iterable[str] = ()) -> dict:
    """The tensors a checkpoint stores for ``module``: its ``adapter_name`` LoRA weights, plus every
    state-dict entry under the prefixes in ``whole_weights`` (e.g. ``"conv_in."`` when it was trained)."""
    prefixes = tuple(whole_weights)
    return {key: value for key, value in module.state_dict().items()
            if f".lora_A.{adapter_name}." in key or f".lora_B.{adapter_name}." in key
            or (prefixes and key.startswith(prefixes))}


def save_lora_checkpoint(path: str | os.PathLike, unet_state: Mapping[str, torch.Tensor], unet_rank: int,
                         unet_target_modules: TargetModules, vae_state: Optional[Mapping[str, torch.Tensor]] = None,
                         vae_rank: Optional[int] = None, vae_target_modules: Optional[TargetModules] = None,
                         dtype: Optional[torch.dtype] = None, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write the public format. States are keyed as in the modules (e.g. from :func:`lora_state_dict`);
    VAE keys may say ``.vae_skip.`` or ``.default.`` (the file stores ``.default.``)."""
    from safetensors.torch import save_file

    fields: dict = {"unet_rank": int(unet_rank), "unet_lora_target_modules": _targets_json(unet_target_modules)}
    parts = [("unet", dict(unet_state))]
    if vae_state:
        if vae_rank is None or vae_target_modules is None:
            raise ValueError("a VAE state needs vae_rank and vae_target_modules")
        fields.update(vae_rank=int(vae_rank), vae_lora_target_modules=_targets_json(vae_target_modules))
        parts.append(("vae", {key.replace(f".{VAE_ADAPTER}.", f".{UNET_ADAPTER}."): value
                              for key, value in vae_state.items()}))
    tensors, names = {}, {}
    for part, state in parts:
        names[f"{part}_state_dict"] = {}
        for key, value in state.items():
            tensor = value.detach().to("cpu", dtype if dtype is not None and value.is_floating_point() else None)
            tensors[f"{part}.{key}"] = tensor.contiguous()
            names[f"{part}_state_dict"][f"{part}.{key}"] = key
    header = {**(metadata or {}), METADATA_KEY: json.dumps({"fields": fields, "tensor_names": names})}
    save_file(tensors, str(path), metadata=header)


def _targets_json(targets: TargetModules) -> TargetModules:
    return targets if isinstance(targets, str) else sorted(targets) if isinstance(targets, set) else list(targets)


__all__ = [
    "METADATA_KEY", "UNET_ADAPTER", "VAE_ADAPTER", "PEFT_DEFAULT_LORA_ALPHA", "FlowSRCheckpoint", "LoraWeights",
    "SafetensorsFile", "CheckpointReport", "read_safetensors_header", "read_checkpoint", "parse_checkpoint",
    "add_lora", "apply_checkpoint", "load_exactly", "merge_lora", "check", "describe", "lora_state_dict",
    "save_lora_checkpoint",
]
