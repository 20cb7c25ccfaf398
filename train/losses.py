"""The distance ``d`` between images, the latent discriminator and its adversarial losses."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class ImageDistance(nn.Module):
    """``d(a, b) = w_l2 * MSE + w_lpips * LPIPS``, per image in the batch (LPIPS only when loaded)."""

    def __init__(self, l2: float = 1.0, lpips_weight: float = 1.0, lpips: Optional[nn.Module] = None):
        super().__init__()
        self.l2, self.lpips_weight = l2, lpips_weight
        self.lpips = lpips if lpips_weight else None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        distance = self.l2 * (a.float() - b.float()).pow(2).mean(dim=(1, 2, 3))
        if self.lpips is not None:
            distance = distance + self.lpips_weight * self.lpips(a.float(), b.float())
        return distance


class LatentDiscriminator(nn.Module):
    """A PatchGAN-style critic on latents: one real/fake logit per patch.

    Latents are small (64 x 64 for a 512 crop with SD's VAE), so a few strided convolutions see the whole
    crop; spectral normalisation keeps it from overpowering the generator early.
    """

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3, spectral_norm: bool = True):
        super().__init__()
        norm = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        blocks: list[nn.Module] = [norm(nn.Conv2d(in_channels, channels, 3, padding=1)), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(layers):
            blocks += [norm(nn.Conv2d(width, width * 2, 4, stride=2, padding=1)), nn.GroupNorm(8, width * 2),
                       nn.LeakyReLU(0.2)]
            width *= 2
        blocks.append(norm(nn.Conv2d(width, 1, 3, padding=1)))
        self.net = nn.Sequential(*blocks)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent.float())


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "non_saturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    raise ValueError(f"unknown stage2.adv.loss {kind!r}; use hinge or non_saturating")


def generator_loss(fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"unknown stage2.adv.loss {kind!r}; use hinge or non_saturating")
