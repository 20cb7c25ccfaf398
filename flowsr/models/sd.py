"""The public FlowSR model: Stable Diffusion 2.1-base's UNet and VAE, conditioned on one constant prompt.

FlowSR never changes its prompt, so the CLIP text encoder runs once, when the model is built, and only its
output (a ``[1, 77, 1024]`` tensor for SD 2.1) is kept: the 340 M text-encoder parameters cost no memory
afterwards.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .. import flow
from ..families import SD21_BASE
from .base import FlowSRModel

#: The prompt the public weights were trained with (docs/FORMAT.md).
POSITIVE_PROMPT = ("A high-resolution, 8K, ultra-realistic image with sharp focus, vibrant colors, "
                   "and natural lighting.")


@torch.no_grad()
def encode_prompt(text_encoder: nn.Module, tokenizer, prompt: str = POSITIVE_PROMPT) -> torch.Tensor:
    """CLIP's last hidden state for ``prompt`` padded to the encoder's full context (77 tokens), as SD does.

    The length comes from the encoder, not from ``tokenizer.model_max_length``, which a tokenizer loaded
    without its config reports as a huge number.
    """
    length = text_encoder.config.max_position_embeddings
    tokens = tokenizer(prompt, padding="max_length", max_length=length, truncation=True,
                       return_tensors="pt").input_ids
    return text_encoder(tokens.to(text_encoder.device)).last_hidden_state


class SDFlowSRModel(FlowSRModel):
    """SD 2.1's latent space (VAE, scaled by ``scaling_factor``) and its UNet as the velocity network."""

    latent_factor = 8
    pad_multiple = 64
    latent_channels = 4

    def __init__(self, unet: nn.Module, vae: nn.Module, prompt_embedding: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.vae = vae
        # Not persistent: it is derived from the base model, so it never goes into a saved state dict.
        self.register_buffer("prompt_embedding", prompt_embedding.detach().clone(), persistent=False)

    @classmethod
    def from_components(cls, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer,
                        prompt: str = POSITIVE_PROMPT) -> "SDFlowSRModel":
        """Build from diffusers/transformers modules; the text encoder is used once here, then dropped."""
        return cls(unet, vae, encode_prompt(text_encoder, tokenizer, prompt).float().cpu())

    @classmethod
    def from_configs(cls, config_dir: str | Path = SD21_BASE.config_dir, seed: int = 0) -> "SDFlowSRModel":
        """The full architecture with random weights (benchmarks: speed does not depend on the values).

        ``config_dir`` holds ``unet/config.json`` and ``vae/config.json`` in the diffusers layout; the prompt
        embedding is random too, shaped as the UNet's cross-attention expects, so no text encoder is built.
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel

        config_dir = Path(config_dir)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(_read_json(config_dir / "unet" / "config.json"))
        vae = AutoencoderKL.from_config(_read_json(config_dir / "vae" / "config.json"))
        prompt_embedding = torch.randn(1, 77, unet.config.cross_attention_dim)
        return cls(unet, vae, prompt_embedding)

    @property
    def denoiser(self) -> nn.Module:
        return self.unet

    @property
    def autoencoder(self) -> nn.Module:
        return self.vae

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        latent_dist = self.vae.encode(pixels.to(_dtype_of(self.vae))).latent_dist
        latent = latent_dist.mean if generator is None else latent_dist.sample(generator=generator)
        return latent * self.scaling_factor

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent.to(_dtype_of(self.vae)) / self.scaling_factor).sample

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dtype = _dtype_of(self.unet)
        timesteps = flow.timestep(t).to(device=x_t.device, dtype=torch.float32)
        context = self.prompt_embedding.to(dtype).expand(x_t.shape[0], -1, -1)
        return self.unet(x_t.to(dtype), timesteps, encoder_hidden_states=context).sample


def _dtype_of(module: nn.Module) -> torch.dtype:
    # The autoencoder may sit in fp32 while the UNet runs in half precision (autoencoder_in_fp32).
    return next(module.parameters()).dtype


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
