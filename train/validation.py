"""Periodic validation: upscale held-out images with the model being trained, through flowsr's own pipeline.

Using :class:`flowsr.FlowSRPipeline` (padding, flow sampling, colour fix) means the numbers are those users
get from the exported file; PSNR / SSIM on Y (and SSIMULACRA2 when installed) come from ``train.evaluate``.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from flowsr.models.base import FlowSRModel
from flowsr.pipeline import FlowSRPipeline

from .data import ValidationImage
from .evaluate import evaluate_pairs

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def inference_mode_of(model: FlowSRModel) -> Iterator[None]:
    """Let the pipeline freeze and ``eval()`` the model, then put the training flags back."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)
        for module, training in modes:
            module.training = training


def save_png(pixels: torch.Tensor, path: Path) -> None:
    """A (3,H,W) float image in [0, 1] to an 8-bit PNG."""
    array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(np.ascontiguousarray(array)).save(path)


def bicubic_baseline(images: Sequence[ValidationImage], scale: int, ssimulacra2: bool) -> dict[str, float]:
    """The scores of plain bicubic upscaling, logged once as the bar to beat."""
    pairs = []
    for image in images:
        lr = Image.fromarray(image.lr.permute(1, 2, 0).numpy())
        up = lr.resize((image.hr.shape[2], image.hr.shape[1]), Image.BICUBIC)
        pairs.append((image.name, up, image.hr.float() / 255))
    result = evaluate_pairs(pairs, scale=scale, use_ssimulacra2=ssimulacra2)
    return {f"val/bicubic/{name}": value for name, value in result.means.items()}


@torch.no_grad()
def validate(model: FlowSRModel, images: Sequence[ValidationImage], scale: int, steps: Sequence[int],
             schedule: str = "uniform", color_fix: str = "wavelet", ssimulacra2: bool = True,
             save_dir: Optional[Path] = None) -> dict[str, float]:
    """Upscale every LR image at each step count; the mean metrics as ``val/<N>step/<metric>``."""
    scalars: dict[str, float] = {}
    with inference_mode_of(model):
        pipeline = FlowSRPipeline(model)
        for n in steps:
            pairs = []
            for image in images:
                lr = (image.lr.float() / 255)[None].to(model.device)
                sr = pipeline.upscale_tensor(lr, scale=scale, steps=n, schedule=schedule, tile_size=0,
                                             color_fix=color_fix)[0].float().cpu()
                sr = sr[:, :image.hr.shape[1], :image.hr.shape[2]]
                pairs.append((image.name, sr, image.hr.float() / 255))
                if save_dir is not None:
                    save_dir.mkdir(parents=True, exist_ok=True)
                    save_png(sr, save_dir / f"{image.name}_{n}step.png")
            result = evaluate_pairs(pairs, scale=scale, use_ssimulacra2=ssimulacra2)
            scalars.update({f"val/{n}step/{name}": value for name, value in result.means.items()})
    return scalars
