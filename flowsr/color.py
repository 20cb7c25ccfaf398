"""Colour fix: keep the output's detail, take the low frequencies (colour, tone) from the LR image.

One-step diffusion super-resolution drifts in colour; FlowSR, like StableSR and OSEDiff, corrects it against
the LR input resized (bicubic) to the output size. All functions take and return (B, 3, H, W) tensors.
The wavelet fix is local (:data:`MARGINS` says how far it reads), so it runs on rectangles of the output;
adain needs whole-image statistics, which the pipeline takes from small copies when the image is tiled.
Both also keep exactly flat areas of the input exactly flat (:func:`keep_flat_areas`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

COLOR_FIXES = ("wavelet", "adain", "none")
WAVELET_LEVELS = 5
#: A pixel is in a flat area when the reference varies by at most this much (0.5 of 255 levels) ...
FLAT_TOLERANCE = 0.5 / 255
#: ... within this many pixels around it; and the output fades from the model's to the flat colour over a
#: box of FLAT_RAMP pixels around each side, so no line shows where a flat area starts.
FLAT_RADIUS, FLAT_RAMP = 8, 4
#: How far (pixels) each fix reads beyond the pixel it sets: the wavelet's dilations 1 + 2 + ... + 16, and the
#: flat-area rule's window.
MARGINS = {"wavelet": max(2 ** WAVELET_LEVELS - 1, FLAT_RADIUS + FLAT_RAMP), "adain": FLAT_RADIUS + FLAT_RAMP,
           "none": 0}

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


def keep_flat_areas(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Where the reference is flat around a pixel (:data:`FLAT_TOLERANCE` within :data:`FLAT_RADIUS`), the
    output takes the reference's colour. A flat input must come back flat, and no network answers a constant
    exactly: the built-in model leaves pattern noise of up to 2 levels inside a flat grey and 4 at its border."""
    spread = _local_max(reference, FLAT_RADIUS) + _local_max(-reference, FLAT_RADIUS)
    flat = (spread.amax(1, keepdim=True) <= FLAT_TOLERANCE).float()
    weight = F.avg_pool2d(F.pad(flat, (FLAT_RAMP,) * 4, mode="replicate"), 2 * FLAT_RAMP + 1, stride=1)
    return torch.lerp(content, reference, weight)  # exact at both ends of the weight


def _local_max(image: torch.Tensor, radius: int) -> torch.Tensor:
    """The maximum over the (2 radius + 1)-pixel square around each pixel, cut at the image's edges."""
    return _sliding_max(_sliding_max(image, radius, -1), radius, -2)


def _sliding_max(image: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """The maximum over ``2 radius + 1`` samples along ``dim``, by doubling windows (1, 2, 4, ... samples) and
    two overlapping ones at the end: 17x quicker on a CPU than ``max_pool2d``. Replicating the edges gives the
    same maxima as cutting the window there."""
    padding = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
    maxima = F.pad(image, padding, mode="replicate")
    window, span = 2 * radius + 1, 1
    while 2 * span <= window:
        length = maxima.shape[dim] - span
        maxima = torch.maximum(maxima.narrow(dim, 0, length), maxima.narrow(dim, span, length))
        span *= 2
    length = image.shape[dim]
    return torch.maximum(maxima.narrow(dim, 0, length), maxima.narrow(dim, window - span, length))


def apply_color_fix(content: torch.Tensor, reference: torch.Tensor, method: str,
                    statistics: Optional[tuple[Statistics, Statistics]] = None) -> torch.Tensor:
    """Apply ``method`` (one of :data:`COLOR_FIXES`) in fp32, then keep flat areas flat (but for ``none``, which
    keeps the model's output as it is); ``statistics`` as :func:`adain_color_fix` takes."""
    if method == "none":
        return content
    content32, reference32 = content.float(), reference.float()
    if method == "wavelet":
        fixed = wavelet_color_fix(content32, reference32)
    elif method == "adain":
        fixed = adain_color_fix(content32, reference32, statistics)
    else:
        raise ValueError(f"unknown colour fix {method!r}; choose one of {COLOR_FIXES}")
    return keep_flat_areas(fixed, reference32).to(content.dtype)
