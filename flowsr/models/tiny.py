"""The small built-in FlowSR model: a pixel-space flow that needs no base model, no download and no GPU.

Its "latent" is the image folded into channels (pixel-unshuffle by ``latent_factor``), which is exact, so
the tiled autoencoder path costs nothing; the velocity network is a diffusers ``UNet2DModel`` trained in
full by ``train/``. It runs through the same flow, tiling and colour fix as the SD 2.1 model.

File format (our own, safetensors): the model's ``state_dict()``, and in the header metadata the key
``flowsr_model`` holding JSON ``{"architecture": "tiny", "config": {...}}`` with the constructor's config.
Any other metadata keys (training command, data, metrics) are kept for the model card.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from .. import flow
from ..errors import CheckpointError
from ..weights_file import FLOWSR_MODEL_KEY as METADATA_KEY
from ..weights_file import load_exactly, save_weights
from .base import FlowSRModel

BUILTIN_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "flowsr_tiny.safetensors"

#: The built-in model's architecture (the configs in train/configs/tiny_*.yaml build the same).
DEFAULT_CONFIG: dict[str, Any] = {
    "latent_factor": 4,
    "unet": {
        "block_out_channels": [64, 128, 192],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "add_attention": False,  # convolutions only: the same result whatever the tile or image size
    },
}

#: Inputs are padded to at least this many latent pixels a side unless the config says otherwise: the training
#: crops of built-in versions 1 and 2 (128 px at x4; versions 3 to 5 trained on 48). A 1x1 flat input came back
#: off by up to 52 levels unpadded, by 5-6 padded to this.
MIN_LATENT_SIDE = 32


class TinyFlowSR(FlowSRModel):
    """Pixel-unshuffle latent + a small UNet velocity network."""

    default_tile_size = 128
    default_tile_overlap = 16
    cpu_tile_size = 128  # its largest layer: 0.06 s at 128, 1.5 s over a whole 768x576 latent (2 cores)
    untiled_bytes_per_pixel = 400  # an estimate: 64 channels at 1/16 of the pixels, a few tensors alive

    def __init__(self, config: Optional[dict[str, Any]] = None):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = json.loads(json.dumps(config or DEFAULT_CONFIG))  # a private, JSON-clean copy
        self.latent_factor = int(self.config["latent_factor"])
        self.latent_channels = 3 * self.latent_factor ** 2
        unet_config = dict(self.config["unet"])
        downsamples = len(unet_config["block_out_channels"]) - 1
        self.pad_multiple = self.latent_factor * 2 ** downsamples
        self.min_latent_side = int(self.config.get("min_latent_side", MIN_LATENT_SIDE))
        self.autoencoder = nn.Identity()
        self.denoiser = UNet2DModel(in_channels=self.latent_channels, out_channels=self.latent_channels,
                                    **unet_config)

    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return F.pixel_unshuffle(pixels, self.latent_factor)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latent, self.latent_factor)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timesteps = flow.timestep(t).to(device=x_t.device, dtype=torch.float32)
        return self.denoiser(x_t.to(self.dtype), timesteps).sample


def save_tiny(model: TinyFlowSR, path: str | Path, metadata: Optional[dict[str, str]] = None,
              dtype: Optional[torch.dtype] = None) -> None:
    """Write ``model`` in our full-model format; ``dtype`` (e.g. fp16) shrinks the file."""
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    header = {**(metadata or {}), METADATA_KEY: json.dumps({"architecture": "tiny", "config": model.config})}
    save_weights(path, tensors, header)


def read_tiny_metadata(path: str | Path) -> Optional[dict[str, Any]]:
    """The parsed ``flowsr_model`` entry of a safetensors file, or None when it is not our format."""
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    return json.loads(raw) if raw is not None else None


def load_tiny(path: str | Path) -> TinyFlowSR:
    """Load a file written by :func:`save_tiny` (weights come back in fp32)."""
    try:
        entry = read_tiny_metadata(path)
    except Exception as error:  # safetensors raises several types for broken headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}); download it again") from None
    if entry is None or entry.get("architecture") != "tiny":
        raise CheckpointError(f"{path} is not a FlowSR small-model file (no '{METADATA_KEY}' metadata)")
    model = TinyFlowSR(entry["config"])
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    load_exactly(model, state, str(path), "The file does not match its own config: it is damaged, "
                 "download it again", complete=True)
    return model.eval()


def load_builtin() -> TinyFlowSR:
    """The small model that ships inside the package."""
    if not BUILTIN_WEIGHTS.exists():
        raise CheckpointError(f"the built-in model's weights are missing ({BUILTIN_WEIGHTS}); reinstall flowsr, "
                              "or pass --checkpoint and --base-model to use the public FlowSR weights")
    return load_tiny(BUILTIN_WEIGHTS)
