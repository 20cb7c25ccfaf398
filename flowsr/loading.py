"""From what the user names (a checkpoint, a base model) to a ready FlowSR model, offline unless asked.

- no checkpoint, no base model: the small model built into the package;
- a file in our full-model format (metadata ``flowsr_model``): that small model, no base model needed;
- ``flowsr.safetensors`` (the public LoRA format): applied to an SD 2.1-base model given as a diffusers
  folder, a single ``.safetensors`` file in the original LDM layout, or a Hugging Face hub id (read from the
  local hub cache; downloaded only with ``allow_download=True``).
- the bare names ``flowsr.safetensors`` and ``v2-1_512-ema-pruned.safetensors``, where no such file is here:
  the copy in :func:`flowsr.downloads.cache_folder`, downloaded there with ``allow_download=True``.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional

import torch

from .devices import resolve_device, resolve_dtype
from .downloads import locate
from .errors import CheckpointError
from .families import FAMILIES, BaseModelFamily, base_model_help, family_for_width
from .lora import apply_lora, usable_lora
from .models.base import FlowSRModel
from .weights_file import FLOWSR_LORA, FLOWSR_MODEL, read_weights_file

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
#: The parts of an SD 2.1-base diffusers folder FlowSR uses (safetensors only: weights never unpickle).
BASE_MODEL_FILES = [
    "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/*",
]
BASE_MODEL_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model(checkpoint: Optional[PathLike] = None, base_model: Optional[PathLike] = None, *,
               device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
               allow_download: bool = False, merge_lora: bool = True) -> FlowSRModel:
    """Load a FlowSR model for inference, on ``device`` in ``dtype`` (names or torch objects).

    ``merge_lora`` folds the public LoRA into the base weights (exact to fp32 rounding, and faster);
    pass False to keep the peft adapters, e.g. to train them further.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    model = _load_on_cpu(checkpoint, base_model, allow_download, merge_lora)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _load_on_cpu(checkpoint: Optional[PathLike], base_model: Optional[PathLike], allow_download: bool,
                 merge_lora: bool) -> FlowSRModel:
    from .models import tiny

    if checkpoint is None:
        if base_model is not None:
            raise CheckpointError(f"a base model ({base_model}) alone is not a super-resolution model: pass the "
                                  "FlowSR weights too (--checkpoint flowsr.safetensors, from the hub repo "
                                  "chunjie-spring/FlowSR)")
        return tiny.load_builtin()
    file = read_weights_file(locate(checkpoint, allow_download))
    if file.kind == FLOWSR_MODEL:
        if base_model is not None:
            logger.warning("%s is a full FlowSR model; the base model %s is not used", file.path, base_model)
        return tiny.load_tiny(file.path)
    lora = usable_lora(file)  # raises for a file of another kind, saying what it is
    family = family_for_width(lora.cross_attention_width) or FAMILIES[0]  # another width: apply_lora names it
    if base_model is None:
        raise CheckpointError(f"{file.path} holds FlowSR's LoRA weights, which apply to a base model: pass one "
                              f"with --base-model (base_model=...). {family.help}")
    unet, vae, text_encoder, tokenizer = load_base_components(base_model, allow_download, family)
    apply_lora(lora, unet, vae, merge=merge_lora)
    return family.load_model_class().from_components(unet, vae, text_encoder, tokenizer)


def load_base_components(base_model: PathLike, allow_download: bool = False,
                         family: BaseModelFamily = FAMILIES[0]):
    """``(unet, vae, text_encoder, tokenizer)`` of the base model, in fp32 on the CPU."""
    path = Path(locate(base_model, allow_download)).expanduser()
    if path.is_dir():
        return load_diffusers_folder(path)
    if path.is_file():
        file = read_weights_file(path)
        if file.kind == FLOWSR_LORA:
            raise CheckpointError(f"{path} is FlowSR's checkpoint, not a base model: pass it as --checkpoint, "
                                  f"and {family.name} as --base-model. {family.help}")
        from .models.single_file import load_single_file_components

        return load_single_file_components(path, config=family.config_dir)
    if _HUB_ID.match(str(base_model)):
        return load_diffusers_folder(hub_snapshot(str(base_model), allow_download))
    raise CheckpointError(f"base model {base_model} not found: it is no folder, no file and no hub id "
                          f"(owner/name). {family.help}")


def load_diffusers_folder(folder: PathLike):
    """The SD components of a diffusers folder; its weights must be safetensors."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    missing = [name for name in BASE_MODEL_FOLDERS if not (folder / name).is_dir()]
    if missing:
        raise CheckpointError(f"{folder} is not a Stable Diffusion diffusers folder: it lacks "
                              f"{', '.join(missing)}. {base_model_help()}")
    options = dict(use_safetensors=True, local_files_only=True)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **options)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **options)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **options)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load the base model in {folder}: {error}. FlowSR reads .safetensors "
                              "weights only (never pickled .bin files)") from None
    return unet, vae, text_encoder, tokenizer


def hub_snapshot(repo_id: str, allow_download: bool) -> Path:
    """A local copy of a hub repo's SD files: from the hub cache, or downloaded (resumable) when allowed."""
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=BASE_MODEL_FILES,
                                                      local_files_only=not allow_download))
    except Exception as error:  # offline, unknown repo, gated, network: all end the same way for the user
        if not allow_download:
            raise CheckpointError(
                f"base model {repo_id} is not in the local Hugging Face cache, and downloads are off: allow "
                "them (allow_download=True; on the command line --allow-download), or download it once with "
                f"`hf download {repo_id}`, or pass a local folder or single .safetensors file instead. "
                f"{base_model_help()}") from None
        raise CheckpointError(f"could not download base model {repo_id} ({type(error).__name__}: {error}); "
                              "check the network and the repo name, or pass a local folder or single "
                              ".safetensors file instead") from None
