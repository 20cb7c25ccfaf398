"""Colour fix: keep the output's detail, take the low frequencies (colour, tone) from the LR image.

One-step diffusion super-resolution drifts in colour; FlowSR, like StableSR and OSEDiff, corrects it against
the LR input resized (bicubic) to the output size. All functions take and return (B, 3, H, W) tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("wavelet", "adain", "none")

_BLUR_KERNEL = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float32) / 16


def wavelet_blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """One level of the a-trous wavelet: a 3x3 binomial blur with holes, replicate padding."""
    channels = image.shape[1]
    kernel = _BLUR_KERNEL.to(image).expand(channels, 1, 3, 3)
    padded = F.pad(image, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=dilation)


def wavelet_split(image: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) frequencies, with ``high + low == image``, over ``levels`` dilations 1, 2, 4, ..."""
    low = image
    for level in range(levels):
        low = wavelet_blur(low, 2 ** level)
    return image - low, low


def wavelet_color_fix(content: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    high, _ = wavelet_split(content, levels)
    _, low = wavelet_split(reference, levels)
    return high + low


def adain_color_fix(content: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Match each channel's mean and standard deviation to the reference's."""
    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(2)
        return flat.mean(-1)[..., None, None], (flat.var(-1) + eps).sqrt()[..., None, None]

    content_mean, content_std = stats(content)
    reference_mean, reference_std = stats(reference)
    return (content - content_mean) / content_std * reference_std + reference_mean


def color_fix(content: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """Apply ``method`` (one of :data:`COLOR_FIXES`) in fp32."""
    if method == "none":
        return content
    fixes = {"wavelet": wavelet_color_fix, "adain": adain_color_fix}
    if method not in fixes:
        raise ValueError(f"unknown colour fix {method!r}; choose one of {COLOR_FIXES}")
    return fixes[method](content.float(), reference.float()).to(content.dtype)
