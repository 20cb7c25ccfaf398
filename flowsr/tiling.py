"""Any image size in bounded memory: overlapping tiles blended with smooth weights.

Tiles are laid out on the latent grid. One function serves the velocity network (latent in, latent out), the
encoder (pixels in, latent out) and the decoder (latent in, pixels out), so peak memory depends on the tile,
not on the image. Normalisation layers would see each tile's own statistics and tint tiles differently, so the
autoencoder runs with statistics measured once on a downscaled copy of the whole input
(:func:`shared_group_norm_statistics`).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)``, neighbours sharing ``overlap``."""
    if size <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    return list(range(0, size - tile, stride)) + [size - tile]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[slice, slice]]:
    """(rows, columns) slices of every tile on a ``height`` x ``width`` grid."""
    return [(slice(y, min(y + tile, height)), slice(x, min(x + tile, width)))
            for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)]


def gaussian_weights(height: int, width: int, device: torch.device) -> torch.Tensor:
    """A (1, 1, H, W) bump with variance 0.01 * size^2 per axis, as the reference blends its tiles."""
    def axis(n: int) -> torch.Tensor:
        position = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        return torch.exp(-position ** 2 / (2 * 0.01 * n ** 2))
    return (axis(height)[:, None] * axis(width)[None, :])[None, None]


def count_batches(height: int, width: int, tile: int, overlap: int, batch_size: int, images: int = 1) -> int:
    """How many calls :func:`tiled_map` makes: the unit of progress."""
    tiles = len(tile_grid(height, width, tile, overlap)) * images
    return -(-tiles // batch_size)


def tiled_map(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, tile: int, overlap: int,
              batch_size: int = 1, in_factor: int = 1, out_factor: int = 1,
              on_batch: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """Apply ``fn`` to overlapping tiles of ``x`` and blend the results.

    The grid is ``x``'s size divided by ``in_factor`` (the latent grid); a tile of ``tile`` grid cells is
    ``tile * in_factor`` input pixels and ``tile * out_factor`` output pixels. ``fn`` takes a batch of up to
    ``batch_size`` tiles (from any of ``x``'s images). ``on_batch`` runs before each call (progress, cancel).
    Where one tile covers the grid, ``fn`` sees the whole input and its output is returned untouched.
    """
    images, _, height, width = x.shape
    grid_h, grid_w = height // in_factor, width // in_factor
    tiles = tile_grid(grid_h, grid_w, tile, overlap)
    jobs = [(index, rows, cols) for index in range(images) for rows, cols in tiles]
    output = weights = None
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        if on_batch is not None:
            on_batch()
        if len(tiles) == 1:
            result = fn(x[start:start + len(chunk)])
            output = result if output is None else torch.cat([output, result])
            continue
        inputs = torch.cat([x[i:i + 1, :, rows.start * in_factor:rows.stop * in_factor,
                              cols.start * in_factor:cols.stop * in_factor] for i, rows, cols in chunk])
        result = fn(inputs).float()
        if output is None:
            output = result.new_zeros(images, result.shape[1], grid_h * out_factor, grid_w * out_factor)
            weights = result.new_zeros(images, 1, grid_h * out_factor, grid_w * out_factor)
        for piece, (i, rows, cols) in zip(result, chunk):
            out_rows = slice(rows.start * out_factor, rows.stop * out_factor)
            out_cols = slice(cols.start * out_factor, cols.stop * out_factor)
            bump = gaussian_weights(piece.shape[-2], piece.shape[-1], piece.device)[0]
            output[i, :, out_rows, out_cols] += piece * bump
            weights[i, :, out_rows, out_cols] += bump
    return output if weights is None else output / weights


def downscale_to_fit(x: torch.Tensor, longest_side: int, multiple: int = 1) -> torch.Tensor:
    """``x`` shrunk (area-averaged) so its longer side is at most ``longest_side``, sides a multiple of ``multiple``."""
    factor = max(x.shape[-2], x.shape[-1]) / longest_side
    if factor <= 1:
        return x
    size = tuple(max(multiple, round(side / factor / multiple) * multiple) for side in x.shape[-2:])
    return F.interpolate(x.float(), size=size, mode="area").to(x.dtype)


@contextlib.contextmanager
def shared_group_norm_statistics(module: nn.Module, calibrate: Callable[[], object]) -> Iterator[None]:
    """Inside the block, every GroupNorm of ``module`` uses the statistics it saw during ``calibrate()``.

    ``calibrate`` runs the module once on a small copy of the whole input, so that all tiles are normalised
    alike (per image: the calibration batch must hold the one image whose tiles follow).
    """
    norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
    if not norms:
        yield
        return
    statistics: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(norm: nn.GroupNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        grouped = inputs[0].float().reshape(inputs[0].shape[0], norm.num_groups, -1)
        statistics[norm] = (grouped.mean(-1), grouped.var(-1, unbiased=False))

    hooks = [norm.register_forward_pre_hook(record) for norm in norms]
    try:
        with torch.no_grad():
            calibrate()
    finally:
        for hook in hooks:
            hook.remove()

    def frozen_forward(norm: nn.GroupNorm) -> Callable[[torch.Tensor], torch.Tensor]:
        mean, var = statistics[norm]

        def forward(x: torch.Tensor) -> torch.Tensor:
            grouped = x.float().reshape(x.shape[0], norm.num_groups, -1)
            normed = (grouped - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)
            normed = normed.reshape(x.shape).to(x.dtype)
            if norm.affine:
                affine_shape = (1, -1) + (1,) * (x.ndim - 2)
                normed = normed * norm.weight.reshape(affine_shape) + norm.bias.reshape(affine_shape)
            return normed
        return forward

    patched = [norm for norm in norms if norm in statistics]
    for norm in patched:
        norm.forward = frozen_forward(norm)
    try:
        yield
    finally:
        for norm in patched:
            del norm.forward
