"""Bilinear and bicubic resizing of any rectangle of an image's resized copy, without computing the rest.

Tiles need crops of the resized input; ``F.interpolate`` resizes whole images only, and a crop resized on its
own would shift and clamp differently. So its weights (``align_corners=False``: source ``(i + 0.5) * in / out -
0.5``; bilinear clamped at 0, bicubic with A = -0.75; taps past a border clamped to it) are written out here as
small matrices over the few input rows and columns a rectangle reads. The reflect-then-replicate padding of the
pre-processing is an index map on the output positions, so a padded rectangle is resized in the same pass.
"""
from __future__ import annotations

import torch

CUBIC_A = -0.75
MODES = ("bilinear", "bicubic")


def _cubic(distance: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel, as PyTorch's bicubic uses it."""
    x = distance.abs()
    near = ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1
    far = ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_matrix(in_size: int, out_size: int, positions: torch.Tensor, mode: str) -> tuple[int, torch.Tensor]:
    """``(first, matrix)`` with ``resized[positions] == matrix @ source[first:first + matrix.shape[1]]`` along
    one axis, ``resized`` being ``source`` resized from ``in_size`` to ``out_size`` samples."""
    source = (positions.double() + 0.5) * (in_size / out_size) - 0.5
    if mode == "bilinear":
        source = source.clamp(min=0)
        taps = source.floor()[:, None] + torch.arange(2, dtype=torch.float64)
        weights = 1 - (source[:, None] - taps).abs()
    elif mode == "bicubic":
        taps = source.floor()[:, None] + torch.arange(-1, 3, dtype=torch.float64)
        weights = _cubic(source[:, None] - taps)
    else:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {MODES}")
    taps = taps.clamp(0, in_size - 1).long()
    first = int(taps.min())
    matrix = torch.zeros(len(positions), int(taps.max()) - first + 1, dtype=torch.float64)
    return first, matrix.scatter_add_(1, taps - first, weights).float()


def padded_positions(start: int, stop: int, size: int, padded_size: int) -> torch.Tensor:
    """Which positions of a ``size``-long axis the padded positions ``start..stop`` show: reflected past the end
    (as ``F.pad(mode="reflect")``), then the last reflected one repeated where reflection cannot reach."""
    reflect = min(padded_size - size, size - 1)
    position = torch.arange(start, stop).clamp(max=size + reflect - 1)
    return torch.where(position < size, position, 2 * (size - 1) - position)


def resize_region(image: torch.Tensor, out_size: tuple[int, int], rows: torch.Tensor, cols: torch.Tensor,
                  mode: str, device: torch.device | None = None) -> torch.Tensor:
    """``F.interpolate(image, out_size, mode)[..., rows, :][..., cols]`` computed on ``device`` from the input
    rows and columns it reads only. ``image`` is (B, C, h, w) float; rows and cols are index tensors."""
    device = device or image.device
    top, row_matrix = resize_matrix(image.shape[-2], out_size[0], rows, mode)
    left, col_matrix = resize_matrix(image.shape[-1], out_size[1], cols, mode)
    crop = image[..., top:top + row_matrix.shape[1], left:left + col_matrix.shape[1]]
    crop = crop.to(device=device, dtype=torch.float32)
    return row_matrix.to(device) @ crop @ col_matrix.to(device).T
