"""Losses that need pretrained weights: LPIPS (VGG) and CLIP image-quality alignment.

Neither can download anything: LPIPS comes from the ``lpips`` package when it imports and has its weights,
or from two local files (torchvision's VGG16 weights and LPIPS' linear layers) read by our own small LPIPS
network; CLIP comes from a local transformers folder. When the weights are not there the loss is off, and
:func:`load_lpips` / :func:`load_clip_iqa` say so in the log: training goes on with the other losses.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import IQAModelConfig, IQAConfig, LPIPSConfig

logger = logging.getLogger(__name__)

# VGG16's feature stack as torchvision numbers it (so its weight keys load as they are): conv widths, "M" = pool.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices in that stack of the ReLUs LPIPS compares: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_LPIPS_TAPS = (3, 8, 15, 22, 29)
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS (Zhang et al., 2018) with the VGG16 backbone; inputs in [-1, 1], one distance per image."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.features = _vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _LPIPS_CHANNELS)
        self.requires_grad_(False).eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _LPIPS_TAPS:
                taps.append(x)
                if index == _LPIPS_TAPS[-1]:
                    break
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        feats_a = self._taps((a - self.shift) / self.scale)
        feats_b = self._taps((b - self.shift) / self.scale)
        total = 0.0
        for lin, fa, fb in zip(self.lins, feats_a, feats_b):
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((fa - fb) ** 2).mean((2, 3))
        return total.flatten()

    @classmethod
    def from_files(cls, vgg_weights: str | Path, linear_weights: str | Path) -> "LPIPS":
        """torchvision's ``vgg16`` weights (keys ``features.N.*``) and LPIPS' ``vgg.pth`` (keys ``linK.model.1.weight``)."""
        model = cls()
        vgg = {k: v for k, v in _read_tensors(vgg_weights).items() if k.startswith("features.")}
        lins = {f"lins.{k[3]}.weight": v for k, v in _read_tensors(linear_weights).items()
                if k.startswith("lin") and k.endswith(".weight")}
        missing, unexpected = model.load_state_dict({**vgg, **lins}, strict=False)
        if missing or unexpected:
            raise ValueError(f"LPIPS weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
        return model


def _read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


class _PackageLPIPS(nn.Module):
    """The ``lpips`` package's network behind the same interface (one distance per image)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.requires_grad_(False).eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(a, b).flatten()


def load_lpips(config: LPIPSConfig) -> Optional[nn.Module]:
    """LPIPS from local files or the ``lpips`` package, or None (with a log line saying why and how to enable it)."""
    if config.vgg_weights and config.linear_weights:
        model = LPIPS.from_files(config.vgg_weights, config.linear_weights)
        logger.info("LPIPS loss on: VGG16 weights from %s", config.vgg_weights)
        return model
    if config.package:
        try:
            import lpips  # imports torchvision; may try to download VGG weights
            model = _PackageLPIPS(lpips.LPIPS(net="vgg", verbose=False))
            logger.info("LPIPS loss on: the lpips package")
            return model
        except Exception as error:  # ImportError, or a failed weight download: both mean "not available here"
            reason = f"the lpips package is not usable ({type(error).__name__}: {error})"
    else:
        reason = "lpips.package is false"
    logger.warning("LPIPS loss OFF: %s and lpips.vgg_weights / lpips.linear_weights are not set. "
                   "Training uses the L2 term only.", reason)
    return None


class CLIPIQALoss(nn.Module):
    """CLIP image-quality alignment: pull each image's CLIP embedding towards a positive caption.

    The loss is the cross-entropy of the (positive, negative) caption choice, as CLIP-IQA scores quality;
    inputs in [-1, 1]. The CLIP model is frozen; gradients flow to the image only.
    """

    def __init__(self, clip_model: nn.Module, text_features: torch.Tensor, image_size: int, temperature: float):
        super().__init__()
        self.clip = clip_model.requires_grad_(False).eval()
        self.register_buffer("text_features", F.normalize(text_features.float(), dim=-1), persistent=False)
        self.register_buffer("mean", torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1), persistent=False)
        self.image_size, self.temperature = image_size, temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1) / 2
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        x = (x - self.mean) / self.std
        features = _projected(self.clip.get_image_features(pixel_values=x.to(self.text_features.dtype)))
        logits = self.temperature * F.normalize(features.float(), dim=-1) @ self.text_features.T
        return F.cross_entropy(logits, torch.zeros(len(images), dtype=torch.long, device=images.device),
                               reduction="none")

    @classmethod
    def from_pretrained(cls, path: str | Path, positive: str, negative: str, temperature: float) -> "CLIPIQALoss":
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        tokens = tokenizer([positive, negative], padding=True, return_tensors="pt")
        with torch.no_grad():
            text = _projected(model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask))
        return cls(model, text, model.config.vision_config.image_size, temperature)


def _projected(output) -> torch.Tensor:
    # transformers < 5 returns the projected features; 5 returns an output whose pooler_output holds them.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_clip_iqa(clip_config: IQAModelConfig, iqa_config: IQAConfig) -> Optional[CLIPIQALoss]:
    """The CLIP-IQA loss from ``clip.path``, or None (with a log line) when no local CLIP model is set."""
    path = clip_config.path
    if not path:
        logger.warning("CLIP image-quality loss (L_iqa) OFF: clip.path is not set; point it at a local "
                       "CLIP model folder (transformers layout, e.g. openai/clip-vit-base-patch32) to enable it.")
        return None
    if not Path(path).is_dir():
        raise FileNotFoundError(f"clip.path {path} is not a folder; give a local CLIP model folder or unset it")
    loss = CLIPIQALoss.from_pretrained(path, iqa_config.positive, iqa_config.negative, iqa_config.temperature)
    logger.info("CLIP image-quality loss on: %s", path)
    return loss
