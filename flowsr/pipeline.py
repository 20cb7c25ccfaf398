"""The FlowSR pipeline: LR image -> bilinear resize -> latent -> Euler steps of the flow -> decode -> colour fix.

One network evaluation with the default single step (``x_hr = x_lr - v(x_lr, 1)``). The work streams tile by
tile (:class:`~flowsr.tiling.TilePlan`): each tile is resized from its part of the LR input and encoded on the
model's device, its velocity is blended into the latent on the host, decoded tiles are blended into a band of
rows, and rows leave the band colour-fixed, straight into the caller's output. Accelerator memory depends on the
tile; host memory on the output, the latent and a band of rows. On out-of-memory the tiles shrink and the batch
is tried again.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import flow
from .color import MARGINS, Statistics, apply_color_fix, channel_statistics
from .devices import empty_cache, free_memory, is_out_of_memory, resolve_device, resolve_dtype
from .errors import BadInputError, OutOfMemoryError
from .image_rules import checked_output_size
from .images import ImageLike, Output, check_float_range, to_batch
from .models.base import FlowSRModel
from .options import SCALE, check_option, check_upscale_options
from .progress import CancelCallback, Progress, ProgressCallback
from .resample import padded_positions, resize_region
from .tiling import Band, Tile, TilePlan, Tiling, downscale_to_fit, fit_size, \
    shared_group_norm_statistics

class FlowSRPipeline:
    """Load once, upscale many. The model runs wherever its parameters are when ``upscale`` is called."""

    def __init__(self, model: FlowSRModel):
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, checkpoint=None, base_model=None, device: str | torch.device = "auto",
                        dtype: str | torch.dtype = "auto", allow_download: bool = False,
                        compile: bool = False) -> "FlowSRPipeline":
        """The public weights on an SD 2.1-base model, a small-model file, or (no arguments) the built-in model.

        ``compile`` compiles the velocity network's blocks (:func:`flowsr.speed.compile_network`).
        """
        from .loading import load_model
        from .speed import compile_network, use_channels_last

        resolved_device = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, resolved_device)
        model = use_channels_last(load_model(checkpoint, base_model, device=resolved_device, dtype=resolved_dtype,
                                             allow_download=allow_download))
        if compile:
            compile_network(model)
        return cls(model)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "FlowSRPipeline":
        self.model.to(device=device, dtype=dtype)
        return self

    def upscale(self, image: ImageLike, scale: float = 4.0, **options) -> ImageLike:
        """Upscale a PIL image, numpy array or tensor; the result is of the same kind (uint8 stays uint8...).

        A batch (BHWC array, BCHW tensor) of equal-size images shares network calls. Alpha is resized on its own
        (bicubic) and re-attached; grey images come back grey. ``options`` are those of :meth:`upscale_tensor`.
        """
        batch = to_batch(image)
        return self._upscale(batch.rgb, scale, functools.partial(Output, batch), **options)

    @torch.no_grad()
    def upscale_tensor(self, pixels: torch.Tensor, scale: float = 4.0, **options) -> torch.Tensor:
        """RGB pixels (B, 3, H, W) in [0, 1] to the upscaled pixels, on the input's device, float32.

        Options: ``steps`` (1), ``schedule`` ("uniform"), ``tile_size`` in latent pixels (None: chosen from the
        free memory of the model's device, on a CPU at most the model's default tile; 0: no tiling),
        ``tile_overlap``, ``tile_batch`` (tiles per network call, across the images of the batch), ``color_fix``
        ("wavelet"), ``seed`` (samples the encoder's latent distribution instead of taking its mean),
        ``progress(done, total)`` (network calls finished; ``total`` only once the output is written) and
        ``cancel()`` (polled before each layer of the networks; stops the work with
        :class:`~flowsr.errors.Cancelled`).
        """
        return self._upscale(pixels, scale, functools.partial(Output.of_tensor, pixels), **options)

    @torch.no_grad()
    def _upscale(self, pixels: torch.Tensor, scale: float, make_output: Callable[[tuple[int, int]], Output],
                 steps: int = 1, schedule: str = "uniform", tile_size: Optional[int] = None,
                 tile_overlap: Optional[int] = None, tile_batch: Optional[int] = None, color_fix: str = "wavelet",
                 seed: Optional[int] = None, progress: Optional[ProgressCallback] = None,
                 cancel: Optional[CancelCallback] = None) -> ImageLike:
        """Check everything, plan the tiles, allocate the output, and run (smaller tiles on out-of-memory)."""
        size = self._check_pixels(pixels, scale)
        _check_options(steps, schedule, tile_size, tile_overlap, tile_batch, color_fix, seed)
        tiling = self._tiling(size, tile_size, tile_overlap, tile_batch)
        output = _allocate(make_output, size)
        run = _Run(self.model, pixels.detach().float().cpu(), size, flow.schedule(schedule, steps), color_fix,
                   seed, output)
        plan = run.plan(tiling)
        tracker = Progress(len(plan), progress, cancel)
        with tracker.checked_inside([self.model.denoiser, self.model.autoencoder]):
            while True:
                done_before = tracker.done
                try:
                    run.execute(plan, tracker)
                    return output.result()
                except Exception as error:
                    if not is_out_of_memory(error):
                        raise
                    empty_cache(self.model.device)
                    smaller = plan.tiling.shrunk()
                    if smaller is None:
                        raise OutOfMemoryError(_out_of_memory_advice(self.model.device)) from error
                    old_plan, plan = plan, run.plan(smaller)
                    tracker.total += (tracker.done - done_before) + len(plan) - len(old_plan)

    def _check_pixels(self, pixels: torch.Tensor, scale: float) -> tuple[int, int]:
        """The output's (height, width), once the pixels and the scale are known to be usable."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise BadInputError(f"expected RGB pixels shaped (B, 3, H, W), got {tuple(pixels.shape)}")
        if pixels.shape[0] == 0 or min(pixels.shape[-2:]) < 1:
            raise BadInputError(f"the image is empty ({tuple(pixels.shape)})")
        check_option(SCALE, scale)
        size = checked_output_size(pixels.shape[-2], pixels.shape[-1], scale)
        if pixels.is_floating_point() and bool(torch.isnan(pixels).any()):
            raise BadInputError(f"the image holds {int(torch.isnan(pixels).sum())} NaN (not-a-number) values; "
                                "replace them (e.g. numpy.nan_to_num) before upscaling")
        check_float_range(pixels)
        return size

    def _tiling(self, size: tuple[int, int], tile_size, tile_overlap, tile_batch) -> Tiling:
        """The caller's tiling, with what they left open chosen for the model and its device's free memory."""
        model = self.model
        element = torch.finfo(model.dtype).bits // 8
        on_cpu = model.device.type == "cpu"
        if tile_batch is None and on_cpu:
            # A CPU has no idle units for a bigger call to fill: on 2 cores a 16-frame 256^2 batch, 4 frames per
            # call, took 1.3-2.2x the time per frame of one per call and 1.5-1.9x the memory (bench_upscale.py).
            tile_batch = 1
        return Tiling.choose(tile_size, tile_overlap, tile_batch, free=free_memory(model.device),
                             output_pixels=size[0] * size[1], latent_factor=model.latent_factor,
                             bytes_per_pixel=model.untiled_bytes_per_pixel * element / 2,
                             default_size=model.default_tile_size, default_overlap=model.default_tile_overlap,
                             largest=model.cpu_tile_size if on_cpu else None)


def _check_options(steps, schedule, tile_size, tile_overlap, tile_batch, color_fix, seed) -> None:
    check_upscale_options(dict(steps=steps, schedule=schedule, tile_size=tile_size, tile_overlap=tile_overlap,
                               tile_batch=tile_batch, color_fix=color_fix, seed=seed))


def _allocate(make_output: Callable[[tuple[int, int]], Output], size: tuple[int, int]) -> Output:
    """The output buffer, or a clear error when even that does not fit."""
    try:
        return make_output(size)
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        raise OutOfMemoryError(f"the {size[1]}x{size[0]} output does not fit in memory; upscale a smaller image, "
                               "use a smaller scale, or close other programs") from error


def _out_of_memory_advice(device: torch.device) -> str:
    if device.type == "cpu":
        return ("out of memory even with the smallest tiles; close other programs, or use a smaller scale or a "
                "smaller image")
    return ("out of memory even with the smallest tiles; free accelerator memory, use a half-precision dtype or a "
            "smaller scale")


def padded_side(side: int, model: FlowSRModel) -> int:
    """An image side after the pre-processing's padding: a multiple of the model's ``pad_multiple``, and at
    least its ``min_latent_side``."""
    side = max(side, model.min_latent_side * model.latent_factor)
    return -(-side // model.pad_multiple) * model.pad_multiple


class _Run:
    """One upscale of a batch of equal-size images: the work of every tile, from the LR input to the output."""

    def __init__(self, model: FlowSRModel, lr: torch.Tensor, size: tuple[int, int], times: torch.Tensor,
                 method: str, seed: Optional[int], output: Output):
        self.model, self.lr, self.size, self.times, self.method, self.seed, self.output = \
            model, lr, size, times, method, seed, output
        self.padded = tuple(padded_side(side, model) for side in size)
        self.grid = (self.padded[0] // model.latent_factor, self.padded[1] // model.latent_factor)

    def plan(self, tiling: Tiling) -> TilePlan:
        """Encoder, each flow step, decoder: that many passes over the tiles."""
        return TilePlan(self.grid, len(self.lr), tiling, passes=len(self.times) + 1)

    def execute(self, plan: TilePlan, tracker: Progress) -> None:
        generator = None if self.seed is None else torch.Generator(self.model.device).manual_seed(self.seed)
        latent = self._first_step(plan, tracker, generator)
        for index in range(1, len(self.times) - 1):
            latent = self._step(plan, tracker, latent, index)
        self._decode(plan, tracker, latent)

    # -- the latent: encoder and the first flow step per tile, further steps over the blended latent

    def _first_step(self, plan: TilePlan, tracker: Progress, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Each tile encoded and moved one Euler step, blended into the latent after that step (on the host)."""
        model = self.model
        band, weights = Band(len(self.lr), model.latent_channels, self.grid[1], height=self.grid[0]), plan.weights()
        with self._statistics(plan, self._encoder_calibration) as select:
            for group in plan.groups:
                tracker.check()
                select([tile.image for tile in group])
                x = model.encode_fp32(torch.cat([self._encoder_input(tile) for tile in group]), generator)
                tracker.finished()
                self._blend(band, group, self._euler(x, 0), weights)
                tracker.finished()
        return band.pop(self.grid[0])

    def _step(self, plan: TilePlan, tracker: Progress, latent: torch.Tensor, index: int) -> torch.Tensor:
        band, weights = Band(len(self.lr), latent.shape[1], self.grid[1], height=self.grid[0]), plan.weights()
        for group in plan.groups:
            tracker.check()
            x = torch.stack([latent[tile.image, :, tile.rows, tile.cols] for tile in group]).to(self.model.device)
            self._blend(band, group, self._euler(x, index), weights)
            tracker.finished()
        return band.pop(self.grid[0])

    def _euler(self, x: torch.Tensor, index: int) -> torch.Tensor:
        t, t_next = float(self.times[index]), float(self.times[index + 1])
        v = self.model.velocity(x, torch.full((len(x),), t, device=x.device)).float()
        return flow.euler_step(x, v, t, t_next).cpu()

    @staticmethod
    def _blend(band: Band, group: list[Tile], results: torch.Tensor, weights: torch.Tensor) -> None:
        for tile, result in zip(group, results):
            band.add(tile.image, tile.rows, tile.cols, result, weights)

    def _encoder_input(self, tile: Tile) -> torch.Tensor:
        """The tile's part of the bilinear-resized, padded input in [-1, 1], computed on the model's device."""
        factor, (height, width) = self.model.latent_factor, self.size
        rows = padded_positions(tile.rows.start * factor, tile.rows.stop * factor, height, self.padded[0])
        cols = padded_positions(tile.cols.start * factor, tile.cols.stop * factor, width, self.padded[1])
        lr = self.lr[tile.image:tile.image + 1]
        return resize_region(lr, self.size, rows, cols, "bilinear", self.model.device) * 2 - 1

    def _encoder_calibration(self, side: int) -> None:
        """The encoder on a small copy of each image (its GroupNorms record their statistics)."""
        small = fit_size(self.padded, side * self.model.latent_factor, self.model.latent_factor)
        with self.model.autoencoder_in_fp32():  # statistics recorded from a half-precision overflow would be NaN
            for image in self.lr:
                resized = F.interpolate(image[None].to(self.model.device), size=small, mode="bilinear",
                                        align_corners=False, antialias=True)
                self.model.encode(resized * 2 - 1)

    def _statistics(self, plan: TilePlan, calibrate: Callable[[int], object]):
        """Every autoencoder tile of an image normalised alike (calibrated on a small copy of it, when tiled)."""
        side = plan.tiling.side(self.grid)
        return shared_group_norm_statistics(self.model.autoencoder, lambda: None if plan.whole else calibrate(side))

    # -- pixels: decoder tiles blended into a band of rows; final rows colour-fixed into the output

    def _decode(self, plan: TilePlan, tracker: Progress, latent: torch.Tensor) -> None:
        model, factor, (height, width) = self.model, self.model.latent_factor, self.size
        band, weights, small = Band(len(self.lr), 3, width), plan.weights(factor), []
        with self._statistics(plan, lambda side: small.extend(self._small_decodes(side, latent))) as select:
            adain = None
            if self.method == "adain" and not plan.whole:
                adain = _adain_statistics(self.lr, small or self._small_decodes(plan.tiling.side(self.grid), latent))
            writer = _RowWriter(self, plan, adain, tracker)
            for index, group in enumerate(plan.groups):
                tracker.check()
                select([tile.image for tile in group])
                z = torch.stack([latent[tile.image, :, tile.rows, tile.cols] for tile in group])
                pixels = model.decode_fp32(z.to(model.device)).cpu()
                for tile, tile_pixels in zip(group, pixels):
                    rows = slice(tile.rows.start * factor, min(tile.rows.stop * factor, height))
                    cols = slice(tile.cols.start * factor, min(tile.cols.stop * factor, width))
                    shape = (rows.stop - rows.start, cols.stop - cols.start)
                    band.add(tile.image, rows, cols, tile_pixels[:, :shape[0], :shape[1]],
                             weights[:shape[0], :shape[1]])
                writer.release(band, min(height, plan.final_rows(index) * factor))
                tracker.finished()  # the last call counts once the whole output is written

    def _small_decodes(self, side: int, latent: torch.Tensor) -> list[torch.Tensor]:
        """Each image's latent shrunk to one tile and decoded: the decoder's GroupNorm calibration, and the
        content of adain's whole-image statistics. In fp32, like the encoder's calibration."""
        with self.model.autoencoder_in_fp32():
            return [self.model.decode(downscale_to_fit(image[None], side).to(self.model.device)).float()
                    for image in latent]


def _adain_statistics(lr: torch.Tensor, small_decodes: list[torch.Tensor]) -> list[tuple[Statistics, Statistics]]:
    """Per image: (content's, reference's) channel statistics from small copies of both."""
    statistics = []
    for image, decoded in zip(lr, small_decodes):
        content = (decoded.clamp(-1, 1) + 1) / 2
        reference = F.interpolate(image[None].to(content.device), size=content.shape[-2:], mode="bicubic",
                                  align_corners=False).clamp(0, 1)
        statistics.append((channel_statistics(content), channel_statistics(reference)))
    return statistics


#: The colour fix's rectangles are at most this many pixels a side: on a 2-core CPU the fix of a band of rows a
#: 128-latent tile high and the 3072-pixel image wide took seconds without a poll of Cancel.
FIX_SIDE = 512


class _RowWriter:
    """Takes final rows out of the decoded band and writes them colour-fixed into the output.

    The fix runs on the model's device over rectangles at most a tile wide and ``FIX_SIDE`` a side, each read
    with the margin the fix needs, so that it equals the fix of the whole image (row ``r`` is written once rows
    up to ``r + margin`` are final). Cancel is polled before each rectangle.
    """

    def __init__(self, run: _Run, plan: TilePlan, adain_statistics: Optional[list[tuple[Statistics, Statistics]]],
                 tracker: Progress):
        self.run, self.adain_statistics, self.tracker = run, adain_statistics, tracker
        self.margin = MARGINS[run.method]
        self.side = min(plan.tile_shape[1] * run.model.latent_factor, FIX_SIDE)
        self.rows: Optional[torch.Tensor] = None  # final, not yet written rows plus the margin above them
        self.top = 0      # the output row self.rows starts at
        self.written = 0  # rows [0, written) are in the output

    def release(self, band: Band, final: int) -> None:
        """Rows ``[0, final)`` of the band are final: write what of them the margin allows."""
        if final <= band.top:
            return
        popped = (band.pop(final).clamp(-1, 1) + 1) / 2
        self.rows = popped if self.rows is None else torch.cat([self.rows, popped], 2)
        height = self.run.size[0]
        stop = height if final == height else final - self.margin
        if stop <= self.written:
            return
        for image in range(self.rows.shape[0]):
            for top in range(self.written, stop, self.side):
                self._write(image, top, min(top + self.side, stop))
        self.written = stop
        keep_from = max(0, stop - self.margin)
        self.rows, self.top = self.rows[:, :, keep_from - self.top:].clone(), keep_from

    def _write(self, image: int, start: int, stop: int) -> None:
        run, margin, width = self.run, self.margin, self.run.size[1]
        read = slice(max(start - margin, self.top), min(stop + margin, self.top + self.rows.shape[2]))
        for left in range(0, width, self.side):
            self.tracker.check()
            right = min(left + self.side, width)
            cols = slice(max(left - margin, 0), min(right + margin, width))
            content = self.rows[image:image + 1, :, read.start - self.top:read.stop - self.top, cols]
            fixed = self._fix(image, content.to(run.model.device), read, cols)
            inner = fixed[0, :, start - read.start:stop - read.start, left - cols.start:right - cols.start]
            run.output.write(image, slice(start, stop), slice(left, right), inner.clamp(0, 1))

    def _fix(self, image: int, content: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        method = self.run.method
        if method == "none":
            return content
        reference = resize_region(self.run.lr[image:image + 1], self.run.size, torch.arange(rows.start, rows.stop),
                                  torch.arange(cols.start, cols.stop), "bicubic", content.device).clamp(0, 1)
        statistics = None if self.adain_statistics is None else self.adain_statistics[image]
        return apply_color_fix(content, reference, method, statistics)
