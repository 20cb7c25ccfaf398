"""The public FlowSR weights (``flowsr.safetensors``): a LoRA on a base model; parse, apply, merge, save.

The format is described in ``docs/FORMAT.md``: LoRA tensors (and possibly whole weights such as a trained
``conv_in``) for the UNet and, optionally, the VAE encoder, placed by a JSON entry in the header metadata.
Applying it follows how the weights were trained: peft's ``LoraConfig(r=rank, init_lora_weights="gaussian",
target_modules=...)`` with ``lora_alpha`` left at peft's default of 8 (the update is scaled by ``8 / rank``);
the UNet's adapter is named ``default``, the VAE's ``vae_skip`` (stored VAE keys say ``.default.``).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch
from torch import nn

from .errors import CheckpointError
from .families import base_model_help, family_named
from .weights_file import (FLOWSR_LORA, FLOWSR_LORA_KEY, WeightsFile, load_exactly, read_weights_file,
                           save_weights, wrong_kind_message)

UNET_ADAPTER = "default"
VAE_ADAPTER = "vae_skip"
#: peft's default ``lora_alpha``; the public weights rely on it (their config does not set one).
PEFT_DEFAULT_LORA_ALPHA = 8

TargetModules = Union[str, list]


@dataclass
class LoraPart:
    """One module's part of the file: its LoRA config and where each stored tensor goes."""

    rank: int
    target_modules: TargetModules
    tensor_names: dict  # state_dict key -> tensor name in the file

    @property
    def lora_alpha(self) -> int:
        return PEFT_DEFAULT_LORA_ALPHA

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.rank


@dataclass
class FlowSRLora:
    """A parsed public-format file; its tensors are read from disk only when applied."""

    file: WeightsFile
    unet: LoraPart
    vae: Optional[LoraPart] = None
    problems: list = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.file.path

    def tensors(self, part: LoraPart) -> dict:
        """The stored tensors of ``part`` keyed by where they belong in the module's state dict."""
        stored = self.file.read(part.tensor_names.values())
        return {key: stored[name] for key, name in part.tensor_names.items()}

    @property
    def cross_attention_width(self) -> Optional[int]:
        """The text-embedding width the UNet's cross-attention LoRA reads, when the file has one."""
        for key, name in self.unet.tensor_names.items():
            if re.search(r"\.attn2\.to_[kv]\.lora_A\.", key):
                return int(self.file.tensors[name]["shape"][1])
        return None


# --------------------------------------------------------------------------------------------- parsing

def read_lora(path: str | os.PathLike) -> FlowSRLora:
    """Parse a public-format file and check it; any problem is a :class:`CheckpointError`."""
    return usable_lora(read_weights_file(path))


def usable_lora(file: WeightsFile) -> FlowSRLora:
    """:func:`parse_lora`, with what is wrong with the file raised as a :class:`CheckpointError`."""
    lora = parse_lora(file)
    if lora.problems:
        raise CheckpointError(f"{lora.path} is not a usable FlowSR checkpoint: " + "; ".join(lora.problems))
    return lora


def parse_lora(file: WeightsFile) -> FlowSRLora:
    """Read the FlowSR metadata of ``file``, collecting (not raising) what is wrong with it."""
    if file.kind != FLOWSR_LORA:
        raise CheckpointError(wrong_kind_message(file))
    try:
        payload = json.loads(file.metadata[FLOWSR_LORA_KEY])
        fields, groups = payload.get("fields", {}), payload.get("tensor_names", {})
        if not isinstance(fields, dict) or not isinstance(groups, dict):
            raise ValueError("'fields' and 'tensor_names' must be JSON objects")
    except (ValueError, AttributeError) as error:
        raise CheckpointError(f"{file.path} has corrupt FlowSR metadata ({error}); download it again") from None
    problems: list = []
    unet = _parse_part(file, fields, groups, "unet", problems)
    vae = _parse_part(file, fields, groups, "vae", problems)
    if unet is None:
        problems.append("it holds no UNet weights ('unet_rank' and 'unet_state_dict' are required)")
        unet = LoraPart(1, [], {})
    return FlowSRLora(file, unet, vae, problems)


def _parse_part(file: WeightsFile, fields: dict, groups: dict, part: str, problems: list) -> Optional[LoraPart]:
    rank, targets = fields.get(f"{part}_rank"), fields.get(f"{part}_lora_target_modules")
    names = groups.get(f"{part}_state_dict") or {}
    if not isinstance(names, dict):
        problems.append(f"'{part}_state_dict' is not a JSON object of tensor names; the file is damaged")
        return None
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
    adapter = UNET_ADAPTER if part == "unet" else VAE_ADAPTER
    stored = {key.replace(f".{UNET_ADAPTER}.", f".{adapter}."): name for key, name in stored.items()}
    for key, name in stored.items():
        shape = file.tensors[name]["shape"]
        if f".lora_A.{adapter}." in key and shape[0] != rank:
            problems.append(f"{part} tensor {key} has rank {shape[0]} but the metadata says {part}_rank={rank}")
            break
    return LoraPart(rank, targets, stored)


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
                              f"({error}); it was made for another architecture. {base_model_help()}") from None
    return module


def apply_lora(lora: FlowSRLora, unet: nn.Module, vae: nn.Module, merge: bool = True) -> None:
    """Add the file's adapters to ``unet`` and ``vae`` and load all of its tensors into them.

    ``merge`` folds each LoRA into its base weight (``W + 8/r B A``) and removes the peft layers, so
    inference runs plain diffusers modules at full speed. Merging happens on the weights as loaded (fp32
    on the CPU, before any cast to half precision), where it equals the unmerged model to fp32 rounding;
    the trainer passes ``merge=False`` to keep training the adapters.
    """
    parts = [(unet, lora.unet, UNET_ADAPTER, "UNet")]
    if lora.vae is not None:
        parts.append((vae, lora.vae, VAE_ADAPTER, "VAE"))
    remedy = base_model_help(lora.cross_attention_width)
    for module, part, adapter, name in parts:
        if name == "UNet":
            _check_cross_attention(lora, module)
        add_lora(module, part.rank, part.target_modules, adapter)
        load_exactly(module, lora.tensors(part), f"{lora.path} ({name})", remedy)
        if merge:
            merge_lora(module)


def _check_cross_attention(lora: FlowSRLora, unet: nn.Module) -> None:
    """Refuse a file made for another base model before touching the UNet, naming the mismatch."""
    theirs = lora.cross_attention_width
    ours = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
    if theirs is not None and ours is not None and theirs != ours:
        raise CheckpointError(
            f"{lora.path} was made for a base model with cross-attention width {theirs} ({family_named(theirs)}), "
            f"but the base model given has {ours} ({family_named(ours)}). {base_model_help(ours)}")


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA layer of ``module`` into its base layer and put the base layer back in its place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in list(module.named_modules()):
        if isinstance(layer, BaseTunerLayer):
            layer.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, child, layer.get_base_layer())
    return module


# --------------------------------------------------------------------------------------------- writing

def lora_state_dict(module: nn.Module, adapter_name: str, whole_weights: Iterable[str] = ()) -> dict:
    """The tensors the file stores for ``module``: its ``adapter_name`` LoRA weights, plus every
    state-dict entry under the prefixes in ``whole_weights`` (e.g. ``"conv_in."`` when it was trained)."""
    prefixes = tuple(whole_weights)
    return {key: value for key, value in module.state_dict().items()
            if f".lora_A.{adapter_name}." in key or f".lora_B.{adapter_name}." in key
            or (prefixes and key.startswith(prefixes))}


def save_lora(path: str | os.PathLike, unet_state: Mapping[str, torch.Tensor], unet_rank: int,
              unet_target_modules: TargetModules, vae_state: Optional[Mapping[str, torch.Tensor]] = None,
              vae_rank: Optional[int] = None, vae_target_modules: Optional[TargetModules] = None,
              dtype: Optional[torch.dtype] = None, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write the public format. States are keyed as in the modules (e.g. from :func:`lora_state_dict`);
    VAE keys may say ``.vae_skip.`` or ``.default.`` (the file stores ``.default.``)."""
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
    header = {**(metadata or {}), FLOWSR_LORA_KEY: json.dumps({"fields": fields, "tensor_names": names})}
    save_weights(path, tensors, header)


def _targets_json(targets: TargetModules) -> TargetModules:
    return targets if isinstance(targets, str) else sorted(targets) if isinstance(targets, set) else list(targets)
