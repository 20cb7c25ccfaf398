"""FlowSR on ComfyUI's own networks: the public LoRA as patches on a ComfyUI ``MODEL`` (and, when it upscales,
on the ``VAE``), and the flowsr pipeline running ComfyUI's diffusion model and VAE with a CLIP conditioning.

``ComfyFlowSRModel`` is the seam: a :class:`flowsr.models.base.FlowSRModel` whose networks are ComfyUI's, so
the flow, the tiling, the GroupNorm sharing and the colour fix are flowsr's, unchanged. The LoRA goes through
ComfyUI's patching (``ModelPatcher.clone`` + ``add_patches``, as its LoRA loader does), so the base model stays
as it was for the other branches of a graph, other patches stack, and ComfyUI's memory manager loads, offloads
and casts the patched weights as for its own samplers.
"""
from __future__ import annotations

import re
import weakref
from typing import Optional

import torch

from comfy.weight_adapter import LoRAAdapter

from .. import flowsr
from ..flowsr import flow
from ..flowsr.families import SD21_BASE, family_named
from ..flowsr.lora import FlowSRLora, LoraPart, usable_lora
from ..flowsr.models.base import FlowSRModel
from ..flowsr.models.sd import POSITIVE_PROMPT
from ..flowsr.models.single_file import UNET_PREFIX, VAE_PREFIX, unet_sources, vae_sources
from ..flowsr.weights_file import (FLOWSR_MODEL, SD_LORA, SD_SINGLE_FILE, is_finite, non_finite_problem,
                                   read_weights_file)
from . import host

#: Where Apply FlowSR leaves its mark (and the VAE's share of the file) on the patched MODEL.
ATTACHMENT = "flowsr"
#: ComfyUI's key prefix of the diffusion model inside a MODEL's state dict.
DIFFUSION_MODEL_PREFIX = "diffusion_model."
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<side>[AB])\.[^.]+\.weight")
LOAD_CHECKPOINT = f"load {SD21_BASE.full_name} ({SD21_BASE.single_file}) with 'Load Checkpoint' and connect its MODEL"
#: What to load instead, for each kind of file that is not the public LoRA.
_INSTEAD = {
    SD_SINGLE_FILE: "it is a base model: load it with 'Load Checkpoint', and pick flowsr.safetensors here",
    FLOWSR_MODEL: "it is a complete small FlowSR model: load it with 'Load FlowSR Model' and upscale with "
                  "'FlowSR Upscale (one step)'; pick flowsr.safetensors here",
    SD_LORA: "it is an ordinary Stable Diffusion LoRA: load it with 'Load LoRA'; pick flowsr.safetensors here",
}


def weight_choices() -> list[str]:
    """The loader's FlowSR weights, less the built-in model, which is a whole model rather than a LoRA."""
    return [name for name in host.weight_choices() if name != flowsr.BUILTIN_MODEL_NAME]


# ------------------------------------------------------------------------------------------- Apply FlowSR

class FlowSRPatch:
    """What Apply FlowSR leaves on the MODEL: the file, its strength, and the VAE's share of it.

    The VAE LoRA (the encoder side) is patched onto a clone of the VAE when an upscale runs, so the VAE the
    user connected stays untouched for ordinary decoding; one clone per VAE is kept, so a second upscale finds
    it loaded.
    """

    def __init__(self, lora: FlowSRLora, strength: float, name: str):
        self.lora, self.strength, self.name = lora, strength, name
        self._vae_clones: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def vae_patcher(self, vae):
        """The patcher of ``vae`` with the file's VAE LoRA applied (the VAE's own one when the file has none)."""
        if self.lora.vae is None:
            return vae.patcher
        clone = self._vae_clones.get(vae.patcher)
        if clone is None:
            clone = vae.patcher.clone()
            weights = original_weights(clone)
            clone.add_patches(lora_patches(self.lora, self.lora.vae, _vae_names(weights.keys()), weights, "VAE"),
                              self.strength)
            self._vae_clones[vae.patcher] = clone
        return clone


def apply(model, flowsr_weights: str, strength: float):
    """A clone of ``model`` with the public LoRA's UNet part as ComfyUI patches, scaled by ``strength``."""
    _check_model(model)
    if model.get_attachment(ATTACHMENT) is not None:
        raise flowsr.BadInputError("FlowSR is already applied to this MODEL; connect the MODEL from before "
                                   "the first 'Apply FlowSR'")
    lora = read_public_lora(flowsr_weights)
    _check_family(lora, model)
    patched = model.clone()
    weights = original_weights(patched)
    patched.add_patches(lora_patches(lora, lora.unet, _unet_names(model, weights.keys()), weights, "UNet"), strength)
    patched.set_attachments(ATTACHMENT, FlowSRPatch(lora, strength, flowsr_weights))
    return patched


def original_weights(patcher) -> dict:
    """Each weight as it is without any patch: ComfyUI patches weights in place while a clone is loaded, so the
    live state dict may hold another clone's FlowSR already (``get_key_patches`` reads ComfyUI's backups)."""
    return {key: entries[0][0] for key, entries in patcher.get_key_patches().items()}


def read_public_lora(name: str) -> FlowSRLora:
    """The public LoRA file picked in the node, or an error naming what to load instead."""
    path = host._resolve_weights(name)
    if path is None:
        raise flowsr.BadInputError(f"'{name}' {_INSTEAD[FLOWSR_MODEL]} (in models/flowsr, from the Hugging Face "
                                   "repo chunjie-spring/FlowSR)")
    file = read_weights_file(path)
    try:
        return usable_lora(file)
    except flowsr.CheckpointError as error:
        advice = _INSTEAD.get(file.kind)
        raise flowsr.CheckpointError(f"{error}" + (f"\nIn ComfyUI: {advice}" if advice else "")) from None


def _check_model(model) -> None:
    if not (hasattr(model, "clone") and hasattr(model, "add_patches") and hasattr(model, "model")):
        raise flowsr.BadInputError(f"expected a MODEL (e.g. from 'Load Checkpoint'), got {type(model).__name__}")


def _check_family(lora: FlowSRLora, model) -> None:
    """A file for another family than the MODEL's (or a MODEL that is no SD UNet) is refused before patching."""
    theirs = lora.cross_attention_width
    ours = _unet_config(model).get("context_dim")
    if theirs is not None and ours is not None and theirs != ours:
        raise flowsr.CheckpointError(
            f"{lora.path} was made for {family_named(theirs)} (cross-attention width {theirs}) but this MODEL is "
            f"{family_named(ours)} (width {ours}): {LOAD_CHECKPOINT} here")


def _unet_config(model) -> dict:
    config = getattr(getattr(model.model, "model_config", None), "unet_config", None)
    return config if isinstance(config, dict) else {}


def _unet_names(model, keys) -> dict[str, str]:
    """Diffusers UNet names (as the file uses them) to the MODEL's state-dict keys (LDM layout)."""
    blocks = _unet_config(model).get("num_res_blocks")
    if blocks is None:
        raise flowsr.CheckpointError(f"this MODEL is not a Stable Diffusion UNet: {LOAD_CHECKPOINT} here")
    layers = blocks[0] if isinstance(blocks, (list, tuple)) else blocks
    ldm = ["model." + key for key in keys if key.startswith(DIFFUSION_MODEL_PREFIX)]
    return {name: source.key[len("model."):] for name, source in unet_sources(ldm, int(layers)).items()}


def _vae_names(keys) -> dict[str, str]:
    """Diffusers AutoencoderKL names to the VAE's state-dict keys (LDM layout)."""
    keys = list(keys)
    levels = len({key.split(".")[2] for key in keys if key.startswith("encoder.down.")})
    return {name: source.key[len(VAE_PREFIX):]
            for name, source in vae_sources([VAE_PREFIX + key for key in keys], levels).items()}


def lora_patches(lora: FlowSRLora, part: LoraPart, names: dict[str, str], state: dict, what: str) -> dict:
    """ComfyUI patches for one part of the file: a LoRA adapter per module (``lora_alpha`` 8, as peft's
    default that the weights were trained with), the difference to the base for each whole weight. ``state``
    holds the unpatched weights (:func:`original_weights`)."""
    tensors = lora.tensors(part)
    damaged = non_finite_problem(key for key, tensor in tensors.items() if not is_finite(tensor))
    if damaged:
        raise flowsr.CheckpointError(f"{lora.path}: {damaged[0]}")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    patches = {}
    for key, tensor in tensors.items():
        match = _LORA_KEY.fullmatch(key)
        if match:
            pairs.setdefault(match["module"], {})[match["side"]] = tensor
            continue
        target = _target(names, key, state, lora, what, tensor.numel())
        base = state[target]
        patches[target] = ("diff", (tensor.float().reshape(base.shape) - base.float(),))
    for module, pair in pairs.items():
        down, up = pair["A"], pair["B"]
        _target(names, f"{module}.weight", state, lora, what, up.shape[0] * down[0].numel())
        patches[names[f"{module}.weight"]] = LoRAAdapter(set(), (up, down, float(part.lora_alpha), None, None, None))
    return patches


def _target(names: dict[str, str], key: str, state: dict, lora: FlowSRLora, what: str, numel: int) -> str:
    """The state-dict key a tensor of the file patches, once its size fits there."""
    target = names.get(key)
    if target is None or target not in state or state[target].numel() != numel:
        raise flowsr.CheckpointError(
            f"{lora.path} does not fit this {what}: {key} has no place of its size in it. FlowSR's weights apply "
            f"to {SD21_BASE.full_name}: {LOAD_CHECKPOINT} (and its VAE)")
    return target


# ------------------------------------------------------------------------------------------ FlowSR Upscale

class ComfyFlowSRModel(FlowSRModel):
    """FlowSR's latent space and velocity on ComfyUI's networks: the patched MODEL's diffusion model, the
    VAE's ``first_stage_model``, and the prompt's CLIP encoding as the cross-attention context."""

    def __init__(self, model_patcher, vae_patcher, context: torch.Tensor):
        super().__init__()
        # Plain attributes, not submodules: ComfyUI owns these networks and moves them.
        self.model_patcher, self.vae_patcher, self.context = model_patcher, vae_patcher, context
        self.latent_channels = int(model_patcher.model.latent_format.latent_channels)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.model_patcher.model.diffusion_model

    @property
    def autoencoder(self) -> torch.nn.Module:
        return self.vae_patcher.model

    @property
    def device(self) -> torch.device:
        return self.model_patcher.load_device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the diffusion model computes in: fp8 storage is upcast layer by layer (manual cast)."""
        base = self.model_patcher.model
        return base.manual_cast_dtype or base.get_dtype()

    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        vae = self.autoencoder
        moments = vae.quant_conv(vae.encoder(pixels.to(self.autoencoder_dtype)))
        mean, log_variance = moments.chunk(2, dim=1)
        latent = mean
        if generator is not None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            latent = mean + torch.exp(0.5 * log_variance.clamp(-30.0, 20.0)) * noise
        return self.model_patcher.model.process_latent_in(latent)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        latent = self.model_patcher.model.process_latent_out(latent)
        return self.autoencoder.decode(latent.to(self.autoencoder_dtype))

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dtype = self.dtype
        timesteps = flow.timestep(t).to(device=x_t.device, dtype=torch.float32)
        context = self.context.to(x_t.device, dtype).expand(x_t.shape[0], -1, -1)
        options = dict(self.model_patcher.model_options.get("transformer_options", {}))
        return self.denoiser(x_t.to(dtype), timesteps, context=context, transformer_options=options)


def upscale(model, vae, conditioning, image, scale: float, tile_size: int, tile_overlap: int, color_fix: str,
            seed: int) -> torch.Tensor:
    """ComfyUI IMAGE in, IMAGE out, on the MODEL from Apply FlowSR, the VAE and the prompt's conditioning."""
    patch = _flowsr_patch(model)
    if not (hasattr(vae, "patcher") and hasattr(vae, "first_stage_model")):
        raise flowsr.BadInputError(f"expected a VAE (e.g. from 'Load Checkpoint'), got {type(vae).__name__}")
    context = prompt_embedding(conditioning, model)
    pixels = host.image_to_pixels(image)
    options = host.checked_widgets(scale=scale, tile_size=tile_size, tile_overlap=tile_overlap,
                                   color_fix=color_fix, seed=seed)
    vae_patcher = patch.vae_patcher(vae)
    pipeline = flowsr.FlowSRPipeline(ComfyFlowSRModel(model, vae_patcher, context))
    # ComfyUI's layers cast (and patch) weights per layer, so --lowvram may load them in part.
    return host.run_loaded(pipeline, pixels, options, [model, vae_patcher], force_full_load=False)


def _flowsr_patch(model) -> FlowSRPatch:
    _check_model(model)
    patch = model.get_attachment(ATTACHMENT)
    if not isinstance(patch, FlowSRPatch):
        raise flowsr.BadInputError("this MODEL has no FlowSR weights: connect it through 'Apply FlowSR' first "
                                   f"(Load Checkpoint with {SD21_BASE.single_file} -> Apply FlowSR -> here)")
    return patch


def prompt_embedding(conditioning, model) -> torch.Tensor:
    """The one CLIP encoding FlowSR attends to, (1, tokens, width), from a CONDITIONING of one prompt."""
    if not (isinstance(conditioning, list) and conditioning and isinstance(conditioning[0], (list, tuple))
            and isinstance(conditioning[0][0], torch.Tensor)):
        raise flowsr.BadInputError("conditioning must come from 'CLIP Text Encode (Prompt)' with the FlowSR prompt "
                                   f"({POSITIVE_PROMPT!r}) and the CLIP of Load Checkpoint")
    if len(conditioning) != 1 or conditioning[0][0].ndim != 3 or conditioning[0][0].shape[0] != 1:
        raise flowsr.BadInputError("FlowSR takes the conditioning of one prompt, not a combined or batched one: "
                                   "connect 'CLIP Text Encode (Prompt)' with the FlowSR prompt directly")
    embedding = conditioning[0][0]
    width = _unet_config(model).get("context_dim")
    if width is not None and embedding.shape[-1] != width:
        raise flowsr.BadInputError(
            f"the conditioning is {family_named(embedding.shape[-1])} CLIP's (width {embedding.shape[-1]}), the "
            f"MODEL attends to width {width}: encode the prompt with the CLIP of the same checkpoint")
    return embedding.float()
