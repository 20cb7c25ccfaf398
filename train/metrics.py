"""Image-quality metrics for super-resolution, computed the way SR papers report them.

PSNR and SSIM follow the common MATLAB / basicsr definition: both images quantised to 8 bits, ``crop_border``
pixels (usually the scale) removed from every side, the luma Y of ITU-R BT.601 in the studio range 16..235
(from RGB in 0..255), PSNR against a peak of 255, SSIM with an 11x11 Gaussian window (sigma 1.5), K1=0.01,
K2=0.03, over the "valid" part of the image only, all in float64.

SSIMULACRA2 (PyPI ``ssimulacra2``, BSD-3-Clause, numpy/scipy only) and the learned metrics of ``pyiqa``
are optional: when a package or its weights are missing the metric is skipped with a note saying why.
"""
from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from flowsr.errors import BadInputError

# BT.601 RGB -> Y' for R, G, B in [0, 1]; the coefficients sum to 219 so Y' spans 16..235.
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0
PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PYIQA_DEFAULT = ("lpips", "dists", "niqe", "musiq", "clipiqa")


def to_rgb255(image) -> torch.Tensor:
    """Any RGB image -> float64 tensor [3, H, W] holding 8-bit levels 0..255.

    Accepts a PIL image, a uint8 HWC array, a float HWC array in [0, 1], or a float CHW tensor in [0, 1].
    Float input is rounded to 8-bit levels, so in-memory results equal those of the saved PNG files.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise BadInputError(f"expected an RGB array of shape (H, W, 3), got {image.shape}")
        if image.dtype == np.uint8:
            return torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1)
        if not np.issubdtype(image.dtype, np.floating):
            raise BadInputError(f"expected a uint8 or float array, got {image.dtype}")
        image = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise BadInputError("expected a PIL image, an HWC uint8/float array or a CHW float tensor with 3 channels")
    return (image.detach().to("cpu", torch.float64).clamp(0, 1) * PEAK).round()


def rgb_to_y(rgb255: torch.Tensor) -> torch.Tensor:
    """RGB [..., 3, H, W] in 0..255 -> BT.601 luma [..., H, W] in 16..235 (not rounded, as basicsr)."""
    weights = torch.tensor(Y_WEIGHTS, dtype=rgb255.dtype, device=rgb255.device) / PEAK
    return torch.einsum("...chw,c->...hw", rgb255, weights) + Y_OFFSET


def crop(image: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels from each side of the last two dimensions."""
    if border <= 0:
        return image
    if min(image.shape[-2:]) <= 2 * border:
        raise BadInputError(f"image {tuple(image.shape[-2:])} is too small for a crop border of {border}")
    return image[..., border:-border, border:-border]


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = PEAK) -> float:
    """PSNR in dB; identical images give +inf."""
    mse = torch.mean((a.to(torch.float64) - b.to(torch.float64)) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def gaussian_kernel(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian; SSIM's 2-D window is its outer product, applied separably for speed."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, peak: float = PEAK) -> float:
    """Mean SSIM of two single-channel images [H, W] (Wang et al. 2004, 'valid' window positions only)."""
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise BadInputError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(a.shape[-2:])}")
    x, y = a.to(torch.float64), b.to(torch.float64)
    g = gaussian_kernel().to(x.device)
    # One separable blur over the five maps SSIM needs: E[x], E[y], E[x^2], E[y^2], E[xy].
    maps = torch.stack([x, y, x * x, y * y, x * y])[:, None]
    blurred = F.conv2d(F.conv2d(maps, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))[:, 0]
    mu_x, mu_y, e_xx, e_yy, e_xy = blurred
    var_x, var_y, cov = e_xx - mu_x**2, e_yy - mu_y**2, e_xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().item()


def psnr_y(sr, hr, crop_border: int = 4) -> float:
    """PSNR on the Y channel, as SR papers report it (``crop_border`` is usually the scale)."""
    return psnr(*(crop(rgb_to_y(to_rgb255(image)), crop_border) for image in (sr, hr)))


def ssim_y(sr, hr, crop_border: int = 4) -> float:
    """SSIM on the Y channel, as SR papers report it."""
    return ssim(*(crop(rgb_to_y(to_rgb255(image)), crop_border) for image in (sr, hr)))


def ssimulacra2_available() -> str | None:
    """None when SSIMULACRA2 can run, else why not."""
    try:
        import ssimulacra2  # noqa: F401
    except ImportError:
        return "SSIMULACRA2 skipped: `pip install ssimulacra2` (BSD-3-Clause, needs only numpy/scipy/pillow)"
    return None


def ssimulacra2(sr, hr) -> float:
    """SSIMULACRA2 of ``sr`` against the reference ``hr`` on the full images (100 = identical, higher better).

    The PyPI package reads files, so both images are handed over as in-memory PNGs.
    """
    from ssimulacra2 import compute_ssimulacra2

    def as_png(image) -> io.BytesIO:
        pixels = to_rgb255(image).permute(1, 2, 0).numpy().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        buffer.seek(0)
        return buffer

    return float(compute_ssimulacra2(as_png(hr), as_png(sr)))


class PyiqaMetric:
    """One pyiqa metric; full-reference ones get (sr, hr), no-reference ones only sr."""

    def __init__(self, name: str, metric: Callable, full_reference: bool, lower_better: bool):
        self.name, self.metric = name, metric
        self.full_reference, self.lower_better = full_reference, lower_better

    def __call__(self, sr, hr, device: torch.device) -> float:
        def batch(image):
            return (to_rgb255(image) / PEAK).to(device, torch.float32)[None]

        with torch.no_grad():
            score = self.metric(batch(sr), batch(hr)) if self.full_reference else self.metric(batch(sr))
        return float(score.reshape(-1)[0])


def load_pyiqa(names=PYIQA_DEFAULT, device: torch.device | str = "cpu") -> tuple[list[PyiqaMetric], list[str]]:
    """Create the pyiqa metrics that can run here; return them and a note for each one that cannot.

    pyiqa imports torchvision and downloads backbone weights on first use; offline, or beside a torch
    that torchvision does not match, that fails, and the metric is reported as skipped instead.
    """
    if not names:
        return [], []
    try:
        import pyiqa
    except Exception as error:  # ImportError, or torchvision failing to import inside pyiqa
        return [], [f"pyiqa metrics ({', '.join(names)}) skipped: pyiqa does not import here ({error!r})"]
    metrics, notes = [], []
    for name in names:
        try:
            metric = pyiqa.create_metric(name, device=torch.device(device), as_loss=False)
        except Exception as error:  # most often: weights not cached and no network
            notes.append(f"{name} skipped: pyiqa could not create it, usually because its weights are not "
                         f"in the pyiqa/torch hub cache and cannot be downloaded ({type(error).__name__}: {error})")
            continue
        metrics.append(PyiqaMetric(name, metric, getattr(metric, "metric_mode", "FR") == "FR",
                                   bool(getattr(metric, "lower_better", False))))
    return metrics, notes
