"""Colour fix: keep the output's detail, take the low frequencies (colour, tone) from the LR image.

One-step diffusion super-resolution drifts in colour; FlowSR, like StableSR and OSEDiff, corrects it against
the LR input resized (bicubic) to the output size. All functions take and return (B, 3, H, W) tensors.
The wavelet fix is local (:data:`MARGINS` says how far it reads), so it runs on rectangles of the output;
adain needs whole-image statistics, which the pipeline takes from small copies when the image is tiled.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

COLOR_FIXES = ("wavelet", "adain", "none")
WAVELET_LEVELS = 5
#: How far (pixels) each fix reads beyond the pixel it sets: the wavelet's dilations 1 + 2 + ... + 16.
MARGINS = {"wavelet": 2 ** WAVELET_LEVELS - 1, "adain": 0, "none": 0}

Statistics = tuple[torch.Tensor, torch.Tensor]
"""Per-channel (mean, standard deviation), each (B, 3, 1, 1)."""


def wavelet_blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """One level of the a-trous wavelet: the 3x3 binomial blur ([1, 2, 1] / 4 on each axis) with holes,
    replicate padding. The kernel is separable, so it runs as two passes of shifted adds: several times
    quicker on a CPU than the equivalent depthwise dilated convolution."""
    return _binomial_pass(_binomial_pass(image, dilation, -2), dilation, -1)


def _binomial_pass(image: torch.Tensor, dilation: int, dim: int) -> torch.Tensor:
    """``(x[i - d] + 2 x[i] + x[i + d]) / 4`` along ``dim`` (-2 rows, -1 columns), edges replicated."""
    padding = (dilation, dilation, 0, 0) if dim == -1 else (0, 0, dilation, dilation)
    padded = F.pad(image, padding, mode="replicate")
    length = image.shape[dim]
    before, centre, after = (padded.narrow(dim, start, length) for start in (0, dilation, 2 * dilation))
    return (before + after).add_(centre, alpha=2).mul_(0.25)


def wavelet_split(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) frequencies, with ``high + low == image``, over ``levels`` dilations 1, 2, 4, ..."""
    low = image
    for level in range(levels):
        low = wavelet_blur(low, 2 ** level)
    return image - low, low


def wavelet_color_fix(content: torch.Tensor, reference: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """The content's high frequencies plus the reference's low ones. The blur is linear, so this is
    ``content + low(reference - content)``: one split instead of two."""
    _, low = wavelet_split(reference - content, levels)
    return content + low


def channel_statistics(image: torch.Tensor, eps: float = 1e-5) -> Statistics:
    flat = image.float().flatten(2)
    return flat.mean(-1)[..., None, None], (flat.var(-1) + eps).sqrt()[..., None, None]


def adain_color_fix(content: torch.Tensor, reference: torch.Tensor, statistics: Optional[tuple[Statistics, Statistics]]
                    = None) -> torch.Tensor:
    """Match each channel's mean and standard deviation to the reference's; ``statistics`` ((content's),
    (reference's)) when they come from elsewhere than these two tensors (small copies of whole images)."""
    (content_mean, content_std), (reference_mean, reference_std) = statistics or (
        channel_statistics(content), channel_statistics(reference))
    return (content - content_mean) / content_std * reference_std + reference_mean


def apply_color_fix(content: torch.Tensor, reference: torch.Tensor, method: str,
                    statistics: Optional[tuple[Statistics, Statistics]] = None) -> torch.Tensor:
    """Apply ``method`` (one of :data:`COLOR_FIXES`) in fp32; ``statistics`` as :func:`adain_color_fix` takes."""
    if method == "none":
        return content
    if method == "wavelet":
        return wavelet_color_fix(content.float(), reference.float()).to(content.dtype)
    if method == "adain":
        return adain_color_fix(content.float(), reference.float(), statistics).to(content.dtype)
    raise ValueError(f"unknown colour fix {method!r}; choose one of {COLOR_FIXES}")
