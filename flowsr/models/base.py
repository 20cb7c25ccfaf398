"""What the pipeline needs from a FlowSR model: a latent space and a velocity network.

The public SD 2.1 model and the small built-in one both implement this, so they share the flow, the
tiling, the tiled autoencoder and the colour fix.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn


class FlowSRModel(nn.Module):
    """A latent space (``encode`` / ``decode``) and a velocity field over it (``velocity``).

    Subclasses set ``autoencoder`` (the module holding the latent space's weights, may hold none) and
    ``denoiser`` (the velocity network), and the three class attributes below.
    """

    #: Image pixels per latent pixel along each side.
    latent_factor: int = 8
    #: Pre-processing reflect-pads image sides to a multiple of this.
    pad_multiple: int = 64
    #: ... and to at least this many latent pixels: a network trained on crops of that size answers a much
    #: smaller input (a 1x1 icon) with its border artefacts only.
    min_latent_side: int = 0
    #: Channels of the latent.
    latent_channels: int = 4
    #: Tile side and overlap (latent pixels) when the caller leaves tiling automatic and memory is unknown.
    default_tile_size: int = 96
    default_tile_overlap: int = 32
    #: The largest automatic tile side on a CPU: one layer over a larger one runs for seconds, and Cancel is
    #: looked for between layers (SD 2.1's VAE decoder, 2 cores: its largest convolution took 1.6 s at 64,
    #: 5.8 s at 96; bench/bench_cancel.py).
    cpu_tile_size: int = 64
    #: Accelerator memory one output pixel needs in an untiled half-precision pass, weights aside (the SD 2.1
    #: architecture at 512 -> 2048 in bf16 peaked at 11.7 GiB with 1.9 GiB of weights: about 2.5 KB).
    untiled_bytes_per_pixel: int = 2600

    autoencoder: nn.Module
    denoiser: nn.Module

    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Pixels in [-1, 1] (B,3,H,W) to the scaled latent; the distribution's mean unless a generator samples it."""
        raise NotImplementedError

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """A scaled latent to pixels in about [-1, 1] (B,3,H,W)."""
        raise NotImplementedError

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The predicted velocity at ``x_t``; ``t`` holds one flow time in [0, 1] per batch item."""
        raise NotImplementedError

    def encode_fp32(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """:meth:`encode` in the autoencoder's precision, as fp32; redone in fp32 if half precision overflowed."""
        latent = self.encode(pixels, generator)
        if self._overflowed(latent):
            with self.autoencoder_in_fp32():
                latent = self.encode(pixels, generator)
        return latent.float()

    def decode_fp32(self, latent: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` in the autoencoder's precision, as fp32; redone in fp32 if half precision overflowed."""
        pixels = self.decode(latent)
        if self._overflowed(pixels):
            with self.autoencoder_in_fp32():
                pixels = self.decode(latent)
        return pixels.float()

    def _overflowed(self, result: torch.Tensor) -> bool:
        return self.autoencoder_dtype != torch.float32 and not bool(torch.isfinite(result).all())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def autoencoder_dtype(self) -> torch.dtype:
        parameter = next(self.autoencoder.parameters(), None)
        return self.dtype if parameter is None else parameter.dtype

    @contextlib.contextmanager
    def autoencoder_in_fp32(self) -> Iterator[None]:
        """Run the autoencoder in fp32 for a while: the escape from half-precision overflow."""
        dtypes = {p.dtype for p in self.autoencoder.parameters()}
        if dtypes <= {torch.float32}:
            yield
            return
        original = dtypes.pop()
        self.autoencoder.float()
        try:
            yield
        finally:
            self.autoencoder.to(original)
