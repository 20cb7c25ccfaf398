"""Low-resolution images made on the fly, one image at a time: PIL bicubic (clean), the mild condition, and
Real-ESRGAN's second-order degradation in torch.

The model (Wang et al., "Real-ESRGAN", 2021) blurs, resizes, adds noise and JPEG-compresses the image, twice,
then resizes to the target size with an optional sinc filter (ringing), in either order with a last JPEG.
The default ranges below are the paper's published settings. Everything random is drawn from the
``torch.Generator`` passed in, so a sample is a pure function of its seed (exact resume, any worker count).
JPEG goes through PIL: the data loader runs on the CPU and nothing here needs gradients.
"""
from __future__ import annotations

import dataclasses
import io
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .prepare_photos import bicubic_lr

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclasses.dataclass
class BlurConfig:
    kernel_probs: Sequence[float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)   # over KERNEL_TYPES
    sigma: Sequence[float] = (0.2, 3.0)
    beta_generalized: Sequence[float] = (0.5, 4.0)
    beta_plateau: Sequence[float] = (1.0, 2.0)
    sinc_prob: float = 0.1                 # a ringing (sinc) kernel instead of a blur
    kernel_sizes: Sequence[int] = (7, 9, 11, 13, 15, 17, 19, 21)


@dataclasses.dataclass
class OrderConfig:
    """One order of the degradation: blur, resize, noise, JPEG."""
    blur: BlurConfig = dataclasses.field(default_factory=BlurConfig)
    blur_prob: float = 1.0
    resize_probs: Sequence[float] = (0.2, 0.7, 0.1)       # up, down, keep
    resize_range: Sequence[float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5                      # else Poisson noise
    noise_range: Sequence[float] = (1.0, 30.0)            # Gaussian sigma, in 8-bit levels
    poisson_scale_range: Sequence[float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: Sequence[int] = (30, 95)


def _second_order() -> OrderConfig:
    return OrderConfig(blur=BlurConfig(sigma=(0.2, 1.5)), blur_prob=0.8, resize_probs=(0.3, 0.4, 0.3),
                       resize_range=(0.3, 1.2), noise_range=(1.0, 25.0), poisson_scale_range=(0.05, 2.5))


@dataclasses.dataclass
class RealESRGANConfig:
    first: OrderConfig = dataclasses.field(default_factory=OrderConfig)
    second: OrderConfig = dataclasses.field(default_factory=_second_order)
    final_sinc_prob: float = 0.8

    @classmethod
    def from_dict(cls, overrides: dict) -> "RealESRGANConfig":
        """Defaults with ``overrides`` (nested like the fields: ``{"second": {"blur_prob": 0.5}}``) applied."""
        return _replace_nested(cls(), overrides, "data.realesrgan")


def _replace_nested(obj, overrides: dict, where: str):
    fields = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"unknown degradation option {where}.{key}; known: {sorted(fields)}")
        current = getattr(obj, key)
        changes[key] = (_replace_nested(current, value, f"{where}.{key}")
                        if dataclasses.is_dataclass(current) else value)
    return dataclasses.replace(obj, **changes)


@dataclasses.dataclass
class MildConfig:
    """The mild condition (issue #12): a slightly soft camera, bicubic /scale, sensor noise, one JPEG pass."""
    blur_sigma: float = 0.8        # Gaussian blur at HR, in HR pixels
    noise_sigma: float = 5.0       # Gaussian noise at LR, per channel, in 8-bit levels
    jpeg_quality: int = 75

    @classmethod
    def from_dict(cls, overrides: dict) -> "MildConfig":
        return _replace_nested(cls(), overrides, "data.mild")


# --- random draws --------------------------------------------------------------------------------------------

def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _chance(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p


def _choice(g: torch.Generator, options: Sequence, probs: Sequence[float] | None = None):
    weights = torch.ones(len(options)) if probs is None else torch.tensor(probs, dtype=torch.float)
    return options[int(torch.multinomial(weights, 1, generator=g))]


# --- kernels -------------------------------------------------------------------------------------------------

def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return torch.meshgrid(ax, ax, indexing="xy")


def anisotropic_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, shape: str = "gaussian",
                       beta: float = 1.0) -> torch.Tensor:
    """A normalised 2-D kernel over the quadratic form of a rotated covariance.

    ``gaussian``: exp(-q/2); ``generalized``: exp(-q^beta / 2); ``plateau``: 1 / (1 + q^beta).
    """
    x, y = _grid(size)
    cos, sin = math.cos(theta), math.sin(theta)
    u, v = cos * x + sin * y, -sin * x + cos * y           # coordinates along the kernel's principal axes
    q = (u / sigma_x) ** 2 + (v / sigma_y) ** 2
    if shape == "gaussian":
        kernel = torch.exp(-0.5 * q)
    elif shape == "generalized":
        kernel = torch.exp(-0.5 * q ** beta)
    elif shape == "plateau":
        kernel = 1.0 / (1.0 + q ** beta)
    else:
        raise ValueError(f"unknown kernel shape {shape!r}")
    return (kernel / kernel.sum()).float()


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """A circular low-pass filter (the ideal one, truncated): it rings like over-sharpened or resized images."""
    x, y = _grid(size)
    r = torch.sqrt(x ** 2 + y ** 2)
    safe_r = torch.where(r == 0, torch.ones_like(r), r)
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe_r) / (2 * math.pi * safe_r)
    kernel = torch.where(r == 0, torch.full_like(r, cutoff ** 2 / (4 * math.pi)), kernel)
    return (kernel / kernel.sum()).float()


def random_blur_kernel(g: torch.Generator, config: BlurConfig) -> torch.Tensor:
    size = int(_choice(g, config.kernel_sizes))
    if _chance(g, config.sinc_prob):
        low = math.pi / 3 if size < 13 else math.pi / 5
        return sinc_kernel(size, _uniform(g, low, math.pi))
    kind = _choice(g, KERNEL_TYPES, config.kernel_probs)
    shape = "gaussian" if kind in ("iso", "aniso") else kind.split("_")[0]
    beta_range = config.beta_plateau if shape == "plateau" else config.beta_generalized
    # Half the draws below 1 (heavy tails), half above (flat tops), as Real-ESRGAN does.
    beta = _uniform(g, beta_range[0], 1.0) if _chance(g, 0.5) else _uniform(g, 1.0, beta_range[1])
    sigma_x = _uniform(g, *config.sigma)
    if kind.endswith("aniso"):
        return anisotropic_kernel(size, sigma_x, _uniform(g, *config.sigma), _uniform(g, -math.pi, math.pi),
                                  shape, beta)
    return anisotropic_kernel(size, sigma_x, sigma_x, 0.0, shape, beta)


def filter2d(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of a (C,H,W) image with one (k,k) kernel, reflect-padded."""
    pad = kernel.shape[-1] // 2
    channels = image.shape[0]
    padded = F.pad(image[None], (pad, pad, pad, pad), mode="reflect" if min(image.shape[1:]) > pad else "replicate")
    weight = kernel.to(image)[None, None].expand(channels, 1, -1, -1)
    return F.conv2d(padded, weight, groups=channels)[0]


# --- the other operations ------------------------------------------------------------------------------------

def resize(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    align = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(image[None], size=size, mode=mode, **align)[0]


def add_noise(g: torch.Generator, image: torch.Tensor, config: OrderConfig) -> torch.Tensor:
    """Gaussian or Poisson noise, in colour or the same for all channels ("gray" noise)."""
    gray = _chance(g, config.gray_noise_prob)
    if _chance(g, config.gaussian_noise_prob):
        sigma = _uniform(g, *config.noise_range) / 255.0
        shape = (1, *image.shape[1:]) if gray else image.shape
        noise = torch.randn(shape, generator=g) * sigma
    else:
        scale = _uniform(g, *config.poisson_scale_range)
        source = image.mean(0, keepdim=True) if gray else image
        levels = 255.0
        noise = (torch.poisson(source.clamp(0, 1) * levels, generator=g) / levels - source) * scale
    return (image + noise).clamp(0, 1)


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip through PIL (the image is quantised to 8 bits first, as a real file would be)."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    decoded = torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy())
    return decoded.permute(2, 0, 1).float() / 255.0


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def bicubic_downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The classic "bicubic x4" LR of a uint8 (3,H,W) image: PIL's antialiased bicubic, like MATLAB's imresize."""
    small = bicubic_lr(Image.fromarray(hr.permute(1, 2, 0).numpy()), scale)
    return torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1).contiguous()


def mild_degrade(hr: torch.Tensor, scale: int, g: torch.Generator, config: MildConfig | None = None) -> torch.Tensor:
    """A uint8 (3,H,W) HR image to its mildly degraded uint8 LR: blur, bicubic downscale, noise, JPEG.

    The one definition of the mild condition: training (``data.degradation: mild`` or ``mix``), the "mild" row
    of ``train.compare_models`` and ``python -m train.held_out HR OUT --kind mild`` all call it.
    """
    config = config or MildConfig()
    sigma = float(config.blur_sigma)
    image = hr.float() / 255.0
    if sigma > 0:
        image = filter2d(image, anisotropic_kernel(2 * math.ceil(3 * sigma) + 1, sigma, sigma, 0.0))
    lr = bicubic_downscale(to_uint8(image), scale).float() / 255.0
    lr = lr + torch.randn(lr.shape, generator=g) * (float(config.noise_sigma) / 255.0)
    return to_uint8(jpeg(lr.clamp(0, 1), config.jpeg_quality))


def _one_order(g: torch.Generator, image: torch.Tensor, config: OrderConfig, base_size: tuple[int, int],
               with_jpeg: bool) -> torch.Tensor:
    """Blur, resize by a random factor of ``base_size``, noise, and (first order only) JPEG."""
    if _chance(g, config.blur_prob):
        image = filter2d(image, random_blur_kernel(g, config.blur))
    direction = _choice(g, ("up", "down", "keep"), config.resize_probs)
    if direction == "up":
        factor = _uniform(g, 1.0, config.resize_range[1])
    elif direction == "down":
        factor = _uniform(g, config.resize_range[0], 1.0)
    else:
        factor = 1.0
    image = resize(image, (int(base_size[0] * factor), int(base_size[1] * factor)), _choice(g, RESIZE_MODES))
    image = add_noise(g, image, config)
    return jpeg(image, _jpeg_quality(g, config)) if with_jpeg else image


def _jpeg_quality(g: torch.Generator, config: OrderConfig) -> int:
    low, high = config.jpeg_range
    return int(torch.randint(int(low), int(high) + 1, (), generator=g))


def realesrgan_degrade(hr: torch.Tensor, scale: int, g: torch.Generator,
                       config: RealESRGANConfig | None = None) -> torch.Tensor:
    """An HR image (C,H,W, float in [0,1]) to its degraded LR version of size (H/scale, W/scale), in [0,1].

    The first order resizes relative to the HR size, the second relative to the LR size (as Real-ESRGAN
    does); the last step resizes to the LR size with an optional sinc filter, before or after a JPEG.
    """
    config = config or RealESRGANConfig()
    height, width = hr.shape[1:]
    target = (height // scale, width // scale)
    image = _one_order(g, hr.float(), config.first, (height, width), with_jpeg=True)
    image = _one_order(g, image, config.second, target, with_jpeg=False)
    final_kernel = None
    if _chance(g, config.final_sinc_prob):
        final_kernel = sinc_kernel(int(_choice(g, config.second.blur.kernel_sizes)), _uniform(g, math.pi / 3, math.pi))
    quality = _jpeg_quality(g, config.second)
    mode = _choice(g, RESIZE_MODES)
    jpeg_first = _chance(g, 0.5)
    if jpeg_first:
        image = jpeg(image, quality)
    image = resize(image, target, mode)
    if final_kernel is not None:
        image = filter2d(image, final_kernel)
    if not jpeg_first:
        image = jpeg(image, quality)
    return image.clamp(0, 1)
