"""The FlowSR pipeline: LR image -> bilinear resize -> latent -> Euler steps of the flow -> decode -> colour fix.

One network evaluation with the default single step (FLOWSR.md section 2): ``x_hr = x_lr - v(x_lr, 1)``.
Large images are processed in overlapping latent tiles, and the autoencoder in tiles too, so memory depends
on the tile size; on accelerator out-of-memory the tiles shrink and the image is tried again.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import flow
from .color import color_fix
from .devices import empty_cache, free_memory, is_out_of_memory, resolve_device, resolve_dtype
from .errors import BadInputError, Cancelled, OutOfMemoryError
from .images import ImageLike, to_batch
from .models.base import FlowSRModel
from .options import MIN_TILE_SIZE, check_upscale_options
from .tiling import count_batches, downscale_to_fit, shared_group_norm_statistics, tiled_map

#: Outputs beyond this many pixels (about 32k x 32k) are refused before any work starts.
MAX_OUTPUT_PIXELS = 1 << 30

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]


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


class _Progress:
    """Counts network calls across a batch, reports them, and polls the cancel hook before each one."""

    def __init__(self, total: int, callback: Optional[ProgressCallback], cancel: Optional[CancelCallback]):
        self.done, self.total, self.callback, self.cancel = 0, total, callback, cancel

    def tick(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("upscaling was cancelled")
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom and right to a multiple of ``multiple``; replicate what reflection cannot reach."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    reflect_h, reflect_w = min(pad_h, height - 1), min(pad_w, width - 1)
    x = F.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect") if reflect_h or reflect_w else x
    if pad_h > reflect_h or pad_w > reflect_w:
        x = F.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
    return x


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, round(height * scale)), max(1, round(width * scale))


class FlowSRPipeline:
    """Load once, upscale many. The model runs wherever its parameters are when ``upscale`` is called."""

    def __init__(self, model: FlowSRModel):
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, checkpoint=None, base_model=None, device: str | torch.device = "auto",
                        dtype: str | torch.dtype = "auto", allow_download: bool = False) -> "FlowSRPipeline":
        """The public weights on an SD 2.1-base model, a small-model file, or (no arguments) the built-in model."""
        from .loading import load_model

        resolved_device = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, resolved_device)
        return cls(load_model(checkpoint, base_model, device=resolved_device, dtype=resolved_dtype,
                              allow_download=allow_download))

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "FlowSRPipeline":
        self.model.to(device=device, dtype=dtype)
        return self

    def upscale(self, image: ImageLike, scale: float = 4.0, **options) -> ImageLike:
        """Upscale a PIL image, numpy array or tensor; the result is of the same kind.

        Alpha is resized on its own (bicubic) and re-attached; grey images come back grey. ``options`` are
        those of :meth:`upscale_tensor`.
        """
        batch = to_batch(image)
        rgb = self.upscale_tensor(batch.rgb, scale=scale, **options)
        alpha = None
        if batch.alpha is not None:
            alpha = F.interpolate(batch.alpha, size=rgb.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        return batch.restore(rgb, alpha)

    @torch.no_grad()
    def upscale_tensor(self, pixels: torch.Tensor, scale: float = 4.0, steps: int = 1, schedule: str = "uniform",
                       tile_size: Optional[int] = None, tile_overlap: Optional[int] = None,
                       tile_batch: Optional[int] = None, color_fix: str = "wavelet", seed: Optional[int] = None,
                       progress: Optional[ProgressCallback] = None,
                       cancel: Optional[CancelCallback] = None) -> torch.Tensor:
        """RGB pixels (B, 3, H, W) in [0, 1] to the upscaled pixels, on the input's device, float32.

        ``tile_size`` is in latent pixels (None: chosen from free memory; 0: no tiling). ``seed`` samples the
        encoder's latent distribution instead of taking its mean. ``progress(done, total)`` follows network
        calls; ``cancel()`` is polled before each and stops the work with :class:`~flowsr.errors.Cancelled`.
        """
        self._check_options(pixels, scale, steps, schedule, tile_size, tile_overlap, tile_batch, color_fix)
        size = output_size(pixels.shape[-2], pixels.shape[-1], scale)
        times = flow.schedule(schedule, steps)
        tiling = self._tiling(size, tile_size, tile_overlap, tile_batch)
        generator = None if seed is None else torch.Generator(self.model.device).manual_seed(seed)
        tracker = _Progress(len(pixels) * self._calls(size, tiling, steps), progress, cancel)
        results = [self._upscale_with_retries(pixels[i:i + 1], size, times, tiling, color_fix, generator, tracker)
                   for i in range(len(pixels))]
        return torch.cat(results).to(pixels.device)

    def _check_options(self, pixels, scale, steps, schedule, tile_size, tile_overlap, tile_batch, color_fix):
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise BadInputError(f"expected RGB pixels shaped (B, 3, H, W), got {tuple(pixels.shape)}")
        if pixels.shape[0] == 0 or min(pixels.shape[-2:]) < 1:
            raise BadInputError(f"the image is empty ({tuple(pixels.shape)})")
        check_upscale_options(dict(scale=scale, steps=steps, schedule=schedule, tile_size=tile_size,
                                   tile_overlap=tile_overlap, tile_batch=tile_batch, color_fix=color_fix))
        height, width = output_size(pixels.shape[-2], pixels.shape[-1], scale)
        if height * width > MAX_OUTPUT_PIXELS:
            raise BadInputError(f"the output would be {width}x{height} pixels, more than this tool handles; "
                                "upscale a smaller image or use a smaller scale")

    def _tiling(self, size: tuple[int, int], tile_size, tile_overlap, tile_batch) -> Tiling:
        """The caller's tiling, with what they left open chosen from the model and the free memory."""
        model = self.model
        if tile_size is None:
            tile_size, auto_batch = self._auto_tile(model.device, size)
        else:
            auto_batch = 1
        overlap = tile_overlap if tile_overlap is not None else min(model.default_tile_overlap, tile_size // 3)
        return Tiling(tile_size, overlap, tile_batch or auto_batch)

    def _auto_tile(self, device: torch.device, size: tuple[int, int]) -> tuple[int, int]:
        """(tile side, tiles per call) for the memory the device has free; the model's default where unknown.

        No tiles when the whole image fits with room to spare: one pass is the fastest and the exact one.
        """
        free = free_memory(device)
        if free is None:
            return self.model.default_tile_size, 1
        element = torch.finfo(self.model.dtype).bits // 8
        if size[0] * size[1] * self.model.untiled_bytes_per_pixel * element / 2 < free / 2:
            return 0, 1
        gib = free / 2 ** 30
        side = 128 if gib >= 24 else 96 if gib >= 8 else 64 if gib >= 4 else 48
        return side, max(1, min(4, int(gib // 16)))

    def _grid(self, size: tuple[int, int]) -> tuple[int, int]:
        multiple = self.model.pad_multiple
        return (-(-size[0] // multiple) * multiple // self.model.latent_factor,
                -(-size[1] // multiple) * multiple // self.model.latent_factor)

    def _calls(self, size: tuple[int, int], tiling: Tiling, steps: int) -> int:
        """Network calls for one image: encoder tiles, velocity batches per step, decoder tiles."""
        grid_h, grid_w = self._grid(size)
        tile = tiling.side((grid_h, grid_w))
        autoencoder = count_batches(grid_h, grid_w, tile, tiling.overlap, 1)
        return 2 * autoencoder + steps * count_batches(grid_h, grid_w, tile, tiling.overlap, tiling.batch)

    def _upscale_with_retries(self, lr, size, times, tiling, method, generator, tracker) -> torch.Tensor:
        while True:
            done_before = tracker.done
            try:
                return self._upscale_one(lr, size, times, tiling, method, generator, tracker)
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                smaller = tiling.shrunk()
                empty_cache(self.model.device)
                if smaller is None:
                    raise OutOfMemoryError("out of memory even with the smallest tiles; free accelerator memory, "
                                           "use a half-precision dtype or a smaller scale") from error
                steps = len(times) - 1
                tracker.total += (tracker.done - done_before) + self._calls(size, smaller, steps) \
                    - self._calls(size, tiling, steps)
                tiling = smaller

    def _upscale_one(self, lr: torch.Tensor, size: tuple[int, int], times: torch.Tensor, tiling: Tiling,
                     method: str, generator: Optional[torch.Generator], tracker: _Progress) -> torch.Tensor:
        model = self.model
        device = model.device
        lr = lr.to(device=device, dtype=torch.float32)
        upsampled = F.interpolate(lr, size=size, mode="bilinear", align_corners=False)
        padded = pad_to_multiple(upsampled * 2 - 1, model.pad_multiple)
        layout = dict(tile=tiling.side(self._grid(size)), overlap=tiling.overlap, on_batch=tracker.tick)

        factor = model.latent_factor
        latent = self._tiled_autoencoder(lambda x, dtype: model.encode(x.to(dtype), generator), padded, layout,
                                         in_factor=factor)

        def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            def network(chunk: torch.Tensor) -> torch.Tensor:
                return model.velocity(chunk.to(model.dtype), t[:1].expand(len(chunk))).float()
            return tiled_map(network, x_t, batch_size=tiling.batch, **layout)

        latent = flow.sample(velocity, latent, times)
        pixels = self._tiled_autoencoder(lambda z, dtype: model.decode(z.to(dtype)), latent, layout,
                                         out_factor=factor)
        pixels = (pixels[..., :size[0], :size[1]].float().clamp(-1, 1) + 1) / 2
        if method != "none":
            reference = F.interpolate(lr, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
            pixels = color_fix(pixels, reference, method).clamp(0, 1)
        return pixels.cpu()

    def _tiled_autoencoder(self, run: Callable[[torch.Tensor, torch.dtype], torch.Tensor], x: torch.Tensor,
                           layout: dict, in_factor: int = 1, out_factor: int = 1) -> torch.Tensor:
        """The encoder or the decoder, ``run(x, dtype)``, over tiles of ``x``, every tile normalised alike."""
        model = self.model

        def network(chunk: torch.Tensor) -> torch.Tensor:
            return _finite_or_fp32(model, lambda dtype: run(chunk, dtype)).float()

        with self._shared_statistics(x, layout["tile"] * in_factor, in_factor,
                                     lambda small: run(small, model.autoencoder_dtype)):
            return tiled_map(network, x, in_factor=in_factor, out_factor=out_factor, **layout)

    def _shared_statistics(self, x: torch.Tensor, tile_side: int, multiple: int,
                           run: Callable[[torch.Tensor], object]):
        """Normalise every autoencoder tile alike, calibrated on the input shrunk to one tile (when tiled)."""
        if max(x.shape[-2:]) <= tile_side:
            return contextlib.nullcontext()
        return shared_group_norm_statistics(self.model.autoencoder, lambda: run(downscale_to_fit(x, tile_side, multiple)))


def _finite_or_fp32(model: FlowSRModel, run: Callable[[torch.dtype], torch.Tensor]) -> torch.Tensor:
    """``run`` in the autoencoder's precision; again in fp32 if half precision overflowed to inf/NaN."""
    result = run(model.autoencoder_dtype)
    if model.autoencoder_dtype != torch.float32 and not torch.isfinite(result).all():
        with model.autoencoder_in_fp32():
            result = run(torch.float32)
    return result
