"""Building the model to train, the frozen copies stage 2 needs, and exporting what users load.

Two kinds (``model.type``):

- ``tiny``: flowsr's built-in architecture (:class:`flowsr.models.tiny.TinyFlowSR`), trained in full and
  exported in our full-model format (``save_tiny``);
- ``sd``: SD 2.1-base with peft LoRA on the UNet (adapter ``default``) and optionally on the VAE encoder
  (adapter ``vae_skip``), exported as the public ``flowsr.safetensors`` (``save_lora``).

Both load back unchanged through ``flowsr.loading.load_model`` and the CLI.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from torch import nn

from flowsr.lora import (UNET_ADAPTER, VAE_ADAPTER, add_lora, apply_lora, lora_state_dict, merge_lora, read_lora,
                         save_lora)
from flowsr.loading import load_base_components
from flowsr.models.base import FlowSRModel
from flowsr.models.sd import SDFlowSRModel
from flowsr.models.tiny import DEFAULT_CONFIG, TinyFlowSR, load_tiny, save_tiny

from .config import ModelConfig

logger = logging.getLogger(__name__)

Targets = Union[str, list]


@dataclass
class LoraSetup:
    """The adapters of an SD model: what the export writes into the public format's metadata."""
    unet_rank: int
    unet_targets: Targets
    vae_rank: Optional[int] = None
    vae_targets: Optional[Targets] = None


@dataclass
class BuiltModel:
    model: FlowSRModel
    lora: Optional[LoraSetup] = None   # None for the tiny model (trained in full)


def build_model(config: ModelConfig, base_components=None) -> BuiltModel:
    """The model of the ``model`` config section, with ``requires_grad`` set on exactly what trains.

    ``base_components`` (``unet, vae, text_encoder, tokenizer``) bypasses ``model.base_model`` (tests).
    """
    if config.type == "tiny":
        return BuiltModel(_build_tiny(config))
    if config.type == "sd":
        return _build_sd(config, base_components)
    raise ValueError(f"unknown model.type {config.type!r}; use tiny or sd")


def _build_tiny(config: ModelConfig) -> TinyFlowSR:
    if config.init:
        model = load_tiny(config.init)
        if config.config and config.config != model.config:
            logger.warning("model.config differs from the architecture stored in %s; using the file's", config.init)
        logger.info("tiny model initialised from %s", config.init)
    else:
        model = TinyFlowSR(config.config or DEFAULT_CONFIG)
    return model.train().requires_grad_(True)


def _build_sd(config: ModelConfig, base_components) -> BuiltModel:
    if base_components is None:
        if not config.base_model:
            raise ValueError("model.type sd needs model.base_model: an SD 2.1-base diffusers folder or single file")
        base_components = load_base_components(config.base_model)
    unet, vae, text_encoder, tokenizer = base_components
    if config.init:
        initial = read_lora(config.init)
        apply_lora(initial, unet, vae, merge=False)   # adapters as stored, kept trainable
        lora = LoraSetup(initial.unet.rank, initial.unet.target_modules,
                         initial.vae.rank if initial.vae else None,
                         initial.vae.target_modules if initial.vae else None)
        logger.info("SD model initialised from %s (UNet LoRA rank %d%s); model.*_lora settings are not used",
                    config.init, lora.unet_rank, f", VAE LoRA rank {lora.vae_rank}" if lora.vae_rank else "")
    else:
        lora = LoraSetup(config.unet_lora.rank, list(config.unet_lora.target_modules))
        add_lora(unet, lora.unet_rank, lora.unet_targets, UNET_ADAPTER)
        if config.vae_lora.rank:
            lora.vae_rank = config.vae_lora.rank
            lora.vae_targets = encoder_targets(vae, config.vae_lora.target_modules)
            add_lora(vae, lora.vae_rank, lora.vae_targets, VAE_ADAPTER)
    model = SDFlowSRModel.from_components(unet, vae, text_encoder, tokenizer)
    model.requires_grad_(False)
    for name, parameter in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            parameter.requires_grad_(True)
    return BuiltModel(model.train(), lora)


def encoder_targets(vae: nn.Module, leaf_names: list[str]) -> list[str]:
    """Full names of the VAE *encoder's* modules whose name ends in one of ``leaf_names`` (as S3Diff lists them).

    Leaf names alone would also match the decoder, which must stay the one the HR latents were made for.
    """
    return sorted(name for name, module in vae.named_modules()
                  if name.startswith("encoder.") and isinstance(module, (nn.Conv2d, nn.Linear))
                  and any(name == leaf or name.endswith("." + leaf) for leaf in leaf_names))


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def cast_frozen(module: nn.Module, dtype: torch.dtype) -> None:
    """Store frozen base weights in ``dtype`` (half the memory).

    Trainable weights stay fp32 for the optimiser, and so do frozen LoRA weights (stage 2's encoder
    adapter): they are exported, and rounding them would change the file.
    """
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad and parameter.is_floating_point() and ".lora_" not in name:
            parameter.data = parameter.data.to(dtype)


def frozen_copy(denoiser: nn.Module, merge: bool = False) -> nn.Module:
    """A frozen copy of a velocity network; ``merge`` folds its LoRA in (the teacher never changes)."""
    clone = copy.deepcopy(denoiser)
    if merge:
        merge_lora(clone)
    return clone.requires_grad_(False).eval()


def with_denoiser(model: FlowSRModel, denoiser: nn.Module) -> FlowSRModel:
    """A view of ``model`` that shares its autoencoder (and everything else) but runs another velocity network.

    Stage 2 evaluates the teacher and the EMA target this way, through the model's own ``velocity``
    (timestep scaling, prompt embedding), without copying the autoencoder.
    """
    view = copy.copy(model)
    view._modules = {name: (denoiser if module is model.denoiser else module) for name, module in model._modules.items()}
    if view.denoiser is not denoiser:
        raise TypeError(f"{type(model).__name__} keeps its velocity network outside its submodules")
    return view


@contextlib.contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """Run ``module`` without its LoRA adapters: HR latents come from the original encoder.

    The decoder is the base model's, so the HR end of the flow must be the base encoder's latent; only the
    LR image goes through the fine-tuned encoder, as at inference.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def export_model(built: BuiltModel, path: str | Path, dtype: str = "fp32",
                 metadata: Optional[dict[str, str]] = None) -> Path:
    """Write the file users load (whole or not at all: ``flowsr.weights_file.save_weights``).

    ``dtype`` applies to floating tensors: fp16 halves a small model's file (the built-in one ships so);
    keep fp32 for a file that initialises further training.
    """
    model, path = built.model, Path(path)
    if built.lora is None:
        save_tiny(model, path, metadata=metadata, dtype=EXPORT_DTYPES[dtype])
    else:
        lora = built.lora
        unet_state = lora_state_dict(model.denoiser, UNET_ADAPTER)
        vae_state = lora_state_dict(model.autoencoder, VAE_ADAPTER) if lora.vae_rank else None
        save_lora(path, unet_state, lora.unet_rank, lora.unet_targets, vae_state=vae_state,
                  vae_rank=lora.vae_rank, vae_target_modules=lora.vae_targets,
                  dtype=EXPORT_DTYPES[dtype], metadata=metadata)
    return path
