"""Any image size in bounded memory: a plan of overlapping latent tiles, grouped into network calls, and the
band of rows their blended results occupy until they are final.

Tiles are laid out on the latent grid, row after row; a row of tiles holds that row's tiles of every image of a
batch, so one network call can carry tiles of several images. The same plan serves the encoder (pixels in),
the velocity network (latent in, latent out) and the decoder (pixels out). Normalisation layers would see each
tile's own statistics and tint tiles differently, so the autoencoder runs with statistics measured once per
image on a small copy of it (:func:`shared_group_norm_statistics`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BadInputError

#: Out-of-memory retries stop at tiles this small (latent pixels); smaller ones are refused.
MIN_TILE_SIZE = 16


def max_overlap(tile: int) -> int:
    """The largest overlap a tile of side ``tile`` takes: more would step tiles by a sliver (thousands of calls)."""
    return tile // 2
#: The most tiles (or whole images) one network call carries when the caller leaves it automatic.
MAX_AUTO_BATCH = 4
#: Tile sides (latent pixels) the automatic choice picks from, largest first.
AUTO_TILE_SIDES = (128, 96, 64, 48, 32, MIN_TILE_SIZE)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)``, neighbours sharing ``overlap``."""
    if size <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    return list(range(0, size - tile, stride)) + [size - tile]


def gaussian_bump(length: int) -> torch.Tensor:
    """Blend weights along one axis of a tile: variance 0.01 * length^2, as the reference blends its tiles."""
    position = torch.arange(length, dtype=torch.float32) - (length - 1) / 2
    return torch.exp(-position ** 2 / (2 * 0.01 * length ** 2))


@dataclass(frozen=True)
class Tiling:
    """Tile side and overlap in latent pixels (``size == 0``: no tiling), and tiles per network call."""
    size: int
    overlap: int
    batch: int = 1

    def side(self, grid: tuple[int, int]) -> int:
        """The tile side on a latent grid: the whole grid when tiling is off."""
        return self.size or max(grid)

    def shrunk(self) -> Optional["Tiling"]:
        """The next smaller setting to try after running out of memory, or None when there is none."""
        if self.batch > 1:
            return replace(self, batch=self.batch // 2)
        if self.size == 0:
            return Tiling(64, 16)
        if self.size // 2 >= MIN_TILE_SIZE:
            return Tiling(self.size // 2, min(self.overlap, self.size // 8))
        return None

    @classmethod
    def choose(cls, size: Optional[int], overlap: Optional[int], batch: Optional[int], *, free: Optional[int],
               output_pixels: int, latent_factor: int, bytes_per_pixel: float, default_size: int,
               default_overlap: int, largest: Optional[int] = None) -> "Tiling":
        """The caller's tiling, with what they left open (None) chosen for ``free`` bytes of working memory.

        No tiles when the whole image fits in half the free memory: one pass is the fastest and the exact one.
        Otherwise the largest tile of which a call fits in an eighth of it; with automatic tiles, as many tiles
        (or whole images of a batch) per call as fit in a quarter. ``bytes_per_pixel`` is the working memory one output pixel needs. With
        ``free`` unknown, the model's defaults. An automatic tile is at most ``largest`` a side when given.
        """
        automatic = size is None
        if automatic:
            smallest = 2 * overlap if overlap else MIN_TILE_SIZE
            size = cls._automatic_size(free, output_pixels, latent_factor, bytes_per_pixel, default_size, smallest)
            if largest is not None and (size == 0 or size > largest):
                size = max(largest, smallest)
        if batch is None:  # automatic with automatic tiles only: a tile size asked for means one tile per call
            call_pixels = output_pixels if size == 0 else (size * latent_factor) ** 2
            batch = _fitting(free / 4, call_pixels * bytes_per_pixel) if automatic and free is not None else 1
        tiling = cls(size, min(default_overlap, size // 3) if overlap is None else overlap, batch)
        tiling.check(automatic)
        return tiling

    @staticmethod
    def _automatic_size(free: Optional[int], output_pixels: int, latent_factor: int, bytes_per_pixel: float,
                        default_size: int, smallest: int) -> int:
        """No tiles, or the largest side that fits; never below ``smallest`` (twice an overlap the caller set),
        so that the same options work on every machine (an overlap no automatic side can take is refused)."""
        if free is None:
            return max(default_size, min(smallest, AUTO_TILE_SIDES[0]))
        if output_pixels * bytes_per_pixel < free / 2:
            return 0
        sides = [side for side in AUTO_TILE_SIDES if side >= smallest] or [AUTO_TILE_SIDES[0]]
        fitting = (side for side in sides if (side * latent_factor) ** 2 * bytes_per_pixel <= free / 8)
        return next(fitting, sides[-1])

    def check(self, automatic: bool = False) -> None:
        """Refuse an overlap that would make tiles step by a sliver (and the work take thousands of calls)."""
        if self.size and self.overlap > max_overlap(self.size):
            chosen = "chosen automatically for this image and memory" if automatic else "as asked"
            raise BadInputError(f"tile overlap {self.overlap} is more than half the tile size ({self.size} latent "
                                f"pixels, {chosen}); use an overlap of at most {max_overlap(self.size)}, or a larger tile")


def _fitting(budget: float, need: float) -> int:
    return int(max(1, min(MAX_AUTO_BATCH, budget // max(need, 1))))


@dataclass(frozen=True)
class Tile:
    """One tile: which image of the batch, and its rows and columns on the latent grid."""
    image: int
    rows: slice
    cols: slice


def tile_shape(grid: tuple[int, int], side: int) -> tuple[int, int]:
    """A tile of ``side`` x ``side`` latent pixels' area, cut to the grid: where the grid is thinner than a tile
    (a 4000x8 strip), the tile is longer along the other axis, so that thin images take as few calls as their
    area needs instead of one small tile per ``side`` pixels."""
    rows, cols = min(side, grid[0]), min(side, grid[1])
    if rows < side:
        cols = min(grid[1], side * side // rows)
    elif cols < side:
        rows = min(grid[0], side * side // cols)
    return rows, cols


class TilePlan:
    """The tiles of a batch of equal-size images in the order they run, grouped into network calls.

    Its length is the number of network calls: ``passes`` runs over the groups (the encoder, each velocity
    step, the decoder). Rows run top to bottom, so a row of the grid is final once the next group starts below it.
    """

    def __init__(self, grid: tuple[int, int], images: int, tiling: Tiling, passes: int):
        self.grid, self.tiling, self.passes = grid, tiling, passes
        self.tile_shape = tile_shape(grid, tiling.side(grid))
        row_starts = tile_starts(grid[0], self.tile_shape[0], tiling.overlap)
        col_starts = tile_starts(grid[1], self.tile_shape[1], tiling.overlap)
        self.whole = len(row_starts) == len(col_starts) == 1
        self.tiles = [Tile(image, slice(y, y + self.tile_shape[0]), slice(x, x + self.tile_shape[1]))
                      for y in row_starts for image in range(images) for x in col_starts]
        self.groups = [self.tiles[i:i + tiling.batch] for i in range(0, len(self.tiles), tiling.batch)]
        self._rows_overlap, self._cols_overlap = len(row_starts) > 1, len(col_starts) > 1

    def __len__(self) -> int:
        return self.passes * len(self.groups)

    def weights(self, factor: int = 1) -> torch.Tensor:
        """(h, w) blend weights of a tile ``factor`` times the grid's resolution: a bump along the axes where
        tiles overlap, ones along an axis one tile spans (so that a single tile comes back exactly)."""
        height, width = self.tile_shape[0] * factor, self.tile_shape[1] * factor
        rows = gaussian_bump(height) if self._rows_overlap else torch.ones(height)
        cols = gaussian_bump(width) if self._cols_overlap else torch.ones(width)
        return rows[:, None] * cols[None, :]

    def final_rows(self, group_index: int) -> int:
        """Grid rows ``[0, n)`` no tile after group ``group_index`` touches."""
        if group_index + 1 >= len(self.groups):
            return self.grid[0]
        return self.groups[group_index + 1][0].rows.start


class Band:
    """Weighted sums of overlapping tiles over a window of rows of a batch of images; final rows leave it.

    Memory is the window (the rows tiles still touch), not the image, unless every row stays until the end:
    then pass the final ``height``, so the rows are allocated once (growing by concatenation would hold the
    old and the new copy at once: twice the image).
    """

    def __init__(self, images: int, channels: int, width: int, height: int = 0):
        self.top = 0
        self.sums = torch.zeros(images, channels, height, width)
        self.weights = torch.zeros(images, 1, height, width)

    def add(self, image: int, rows: slice, cols: slice, values: torch.Tensor, weights: torch.Tensor) -> None:
        """Add ``values`` (C, h, w) with ``weights`` (h, w) at ``rows`` x ``cols`` (rows below ``top``)."""
        self._extend(rows.stop)
        window = slice(rows.start - self.top, rows.stop - self.top)
        self.sums[image, :, window, cols] += values.float() * weights
        self.weights[image, :, window, cols] += weights

    def _extend(self, stop: int) -> None:
        missing = stop - self.top - self.sums.shape[2]
        if missing > 0:
            self.sums = torch.cat([self.sums, self.sums.new_zeros(*self.sums.shape[:2], missing, self.sums.shape[3])], 2)
            self.weights = torch.cat([self.weights, self.weights.new_zeros(*self.weights.shape[:2], missing,
                                                                           self.weights.shape[3])], 2)

    def pop(self, stop: int) -> torch.Tensor:
        """The blended rows ``[top, stop)`` (B, C, rows, W), which leave the band."""
        count = stop - self.top
        if count == self.sums.shape[2]:  # everything: normalise in place, no copy
            rows = self.sums.div_(self.weights)
            self.sums = rows.new_zeros(*rows.shape[:2], 0, rows.shape[3])
        else:
            rows = self.sums[:, :, :count] / self.weights[:, :, :count]
            self.sums = self.sums[:, :, count:].clone()
        self.weights = self.weights[:, :, count:].clone()
        self.top = stop
        return rows


def fit_size(size: Sequence[int], longest_side: int, multiple: int = 1) -> tuple[int, int]:
    """``size`` shrunk so its longer side is about ``longest_side``, sides a multiple of ``multiple``."""
    factor = max(size) / longest_side
    if factor <= 1:
        return tuple(size)
    return tuple(max(multiple, round(side / factor / multiple) * multiple) for side in size)


def downscale_to_fit(x: torch.Tensor, longest_side: int, multiple: int = 1) -> torch.Tensor:
    """``x`` shrunk (area-averaged) so its longer side is at most ``longest_side``, sides a multiple of ``multiple``."""
    size = fit_size(x.shape[-2:], longest_side, multiple)
    return x if size == tuple(x.shape[-2:]) else F.interpolate(x.float(), size=size, mode="area").to(x.dtype)


class _Recorder:
    """A forward pre-hook that keeps the group statistics each GroupNorm sees, call after call."""

    def __init__(self):
        self.seen: dict[nn.GroupNorm, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def __call__(self, norm: nn.GroupNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        grouped = inputs[0].float().reshape(inputs[0].shape[0], norm.num_groups, -1)
        self.seen.setdefault(norm, []).append((grouped.mean(-1), grouped.var(-1, unbiased=False)))


class ImageSelection:
    """Which image's statistics each item of the next batch uses (set by the caller before each call)."""

    def __init__(self):
        self.images = torch.zeros(1, dtype=torch.long)

    def __call__(self, images: Sequence[int]) -> None:
        self.images = torch.as_tensor(list(images), dtype=torch.long)


class _FrozenGroupNorm:
    """A GroupNorm's forward with fixed per-image statistics instead of the input's own."""

    def __init__(self, norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor, selection: ImageSelection):
        self.norm, self.mean, self.var, self.selection = norm, mean, var, selection

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        norm, chosen = self.norm, self.selection.images.to(self.mean.device)
        mean, var = self.mean[chosen][..., None], self.var[chosen][..., None]
        grouped = x.float().reshape(x.shape[0], norm.num_groups, -1)
        normed = ((grouped - mean) * torch.rsqrt(var + norm.eps)).reshape(x.shape).to(x.dtype)
        if norm.affine:
            affine_shape = (1, -1) + (1,) * (x.ndim - 2)
            normed = normed * norm.weight.reshape(affine_shape) + norm.bias.reshape(affine_shape)
        return normed


@contextlib.contextmanager
def shared_group_norm_statistics(module: nn.Module, calibrate: Callable[[], object]) -> Iterator[ImageSelection]:
    """Inside the block, every GroupNorm of ``module`` uses the statistics it saw during ``calibrate()``.

    ``calibrate`` runs the module on a small copy of each image of the batch, one image after another, so that
    all tiles of an image are normalised alike. The block receives an :class:`ImageSelection`: call it with the
    image index of each item before every batch of tiles.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
    selection = ImageSelection()
    if not norms:
        yield selection
        return
    recorder = _Recorder()
    hooks = [norm.register_forward_pre_hook(recorder) for norm in norms]
    try:
        with torch.no_grad():
            calibrate()
    finally:
        for hook in hooks:
            hook.remove()
    for norm, seen in recorder.seen.items():
        norm.forward = _FrozenGroupNorm(norm, torch.cat([m for m, _ in seen]), torch.cat([v for _, v in seen]),
                                        selection)
    try:
        yield selection
    finally:
        for norm in recorder.seen:
            del norm.forward
