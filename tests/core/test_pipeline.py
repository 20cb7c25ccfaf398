"""The pipeline on a tiny pixel-space model: conventions, tiling, retries, cancellation, image kinds."""
import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flowsr import BadInputError, Cancelled, FlowSRPipeline, OutOfMemoryError, flow
from flowsr.image_rules import checked_output_size
from flowsr.models.base import FlowSRModel
from flowsr.models.tiny import TinyFlowSR
from flowsr.resample import padded_positions
from flowsr.tiling import Tiling
from tests.core.conftest import TINY_CONFIG


def reference_upscale(model, lr, scale, times):
    """docs/FORMAT.md's conventions, written out plainly: resize, pad, encode, Euler, decode, crop."""
    height, width = round(lr.shape[-2] * scale), round(lr.shape[-1] * scale)
    x = F.interpolate(lr, size=(height, width), mode="bilinear", align_corners=False) * 2 - 1
    multiple, least = model.pad_multiple, model.min_latent_side * model.latent_factor
    padded = [max(side + -side % multiple, least + -least % multiple) for side in (height, width)]
    x = F.pad(x, (0, min(padded[1] - width, width - 1), 0, min(padded[0] - height, height - 1)), mode="reflect")
    x = F.pad(x, (0, padded[1] - x.shape[-1], 0, padded[0] - x.shape[-2]), mode="replicate")
    z = model.encode(x)
    for t, t_next in zip(times[:-1], times[1:]):
        z = z + (t_next - t) * model.velocity(z, torch.full((1,), float(t)))
    return ((model.decode(z)[..., :height, :width].clamp(-1, 1) + 1) / 2)


@pytest.mark.parametrize("steps,schedule", [(1, "uniform"), (3, "uniform"), (4, "sd3")])
def test_untiled_output_follows_the_reference_conventions(tiny_pipeline, image, steps, schedule):
    out = tiny_pipeline.upscale_tensor(image, scale=4, steps=steps, schedule=schedule, tile_size=0, color_fix="none")
    with torch.no_grad():
        expected = reference_upscale(tiny_pipeline.model, image, 4, flow.schedule(schedule, steps).float())
    assert out.shape == (1, 3, 96, 128)
    assert (out - expected).abs().max() < 1 / 255 / 2


def test_non_integer_scale_and_batch(tiny_pipeline, image):
    batch = torch.cat([image, image.flip(-1)])
    out = tiny_pipeline.upscale_tensor(batch, scale=2.5, tile_size=0)
    assert out.shape == (2, 3, 60, 80) and 0 <= out.min() and out.max() <= 1
    single = tiny_pipeline.upscale_tensor(batch[1:], scale=2.5, tile_size=0)
    assert torch.allclose(out[1:], single, atol=1e-5)  # one call for both images: float sums in another order


def test_a_batch_shares_network_calls_and_keeps_progress_exact(tiny_pipeline, image):
    frames = torch.cat([image, image.flip(-1), image.flip(-2)])
    calls, sizes = [], []
    model = tiny_pipeline.model
    original = type(model).velocity
    model.velocity = lambda x_t, t: sizes.append(len(x_t)) or original(model, x_t, t)
    try:
        out = tiny_pipeline.upscale_tensor(frames, tile_size=16, tile_overlap=4, tile_batch=4,
                                           progress=lambda done, total: calls.append((done, total)))
    finally:
        del model.velocity
    one_by_one = torch.cat([tiny_pipeline.upscale_tensor(frame[None], tile_size=16, tile_overlap=4, tile_batch=1)
                            for frame in frames])
    assert torch.allclose(out, one_by_one, atol=1e-5)
    # three frames of 24 x 32 latent pixels, 2 x 3 tiles of 16 each: 18 tiles in 5 calls per pass, 3 passes
    assert sizes == [4, 4, 4, 4, 2]
    assert [done for done, _ in calls] == list(range(1, 16)) and {total for _, total in calls} == {15}


def test_tiling_of_a_local_model_is_seamless(image):
    class Pointwise(FlowSRModel):
        latent_factor, pad_multiple, latent_channels = 4, 16, 48

        def __init__(self):
            super().__init__()
            self.autoencoder, self.denoiser = torch.nn.Identity(), torch.nn.Conv2d(48, 48, 1)

        def encode(self, pixels, generator=None):
            return F.pixel_unshuffle(pixels, 4)

        def decode(self, latent):
            return F.pixel_shuffle(latent, 4)

        def velocity(self, x_t, t):
            return self.denoiser(x_t) * 0.1

    pipe = FlowSRPipeline(Pointwise())
    large = F.interpolate(image, scale_factor=3, mode="bilinear")
    whole = pipe.upscale_tensor(large, tile_size=0)
    tiled = pipe.upscale_tensor(large, tile_size=16, tile_overlap=4, tile_batch=3)
    assert (whole - tiled).abs().max() < 1e-4


def leaves(model):
    return [m for network in (model.denoiser, model.autoencoder) for m in network.modules()
            if next(m.children(), None) is None]


class LayersRun(contextlib.AbstractContextManager):
    """Counts the leaf layers of a model's networks that have finished running."""

    def __init__(self, model):
        self.model, self.count = model, 0

    def __enter__(self):
        self.handles = [m.register_forward_hook(self.finished) for m in leaves(self.model)]
        return self

    def finished(self, module, inputs, output):
        self.count += 1

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def test_progress_counts_finished_calls_and_reaches_total_only_at_the_end(tiny_pipeline, image):
    calls = []
    with LayersRun(tiny_pipeline.model) as layers:
        tiny_pipeline.upscale_tensor(image, steps=2, tile_size=16, tile_overlap=4,
                                     progress=lambda d, t: calls.append((d, t, layers.count)))
        layers_in_all = layers.count
    total = calls[-1][1]
    assert [done for done, _, _ in calls] == list(range(1, total + 1)) and total > 4
    # a call is counted once it ran: the first velocity call after its layers ran, no layer after the last count
    assert calls[1][2] > calls[0][2] and calls[-1][2] == layers_in_all


def test_cancel_asked_during_a_call_stops_it_at_the_next_layer(tiny_pipeline, image):
    """One untiled velocity call; Cancel pressed after its fifth layer: the sixth never runs."""
    model, reported = tiny_pipeline.model, []
    with LayersRun(model) as layers, pytest.raises(Cancelled):
        tiny_pipeline.upscale_tensor(image, tile_size=0, cancel=lambda: layers.count >= 5,
                                     progress=lambda d, t: reported.append((d, t)))
    assert layers.count == 5 < len(leaves(model))
    assert reported == [(1, 3)]  # the encoder's call; the velocity call stopped, nothing more counted
    assert all(not m._forward_pre_hooks for m in leaves(model))


def test_the_cancel_checks_are_removed_after_an_upscale_whatever_its_end(tiny_pipeline, image):
    model = tiny_pipeline.model
    tiny_pipeline.upscale_tensor(image, tile_size=16, tile_overlap=4, cancel=lambda: False)
    assert all(not m._forward_pre_hooks for m in leaves(model))
    with pytest.raises(Cancelled):
        tiny_pipeline.upscale_tensor(image, cancel=lambda: True)
    assert all(not m._forward_pre_hooks for m in leaves(model))

    def broken_cancel():
        raise KeyError("a host's own error")
    with pytest.raises(KeyError):
        tiny_pipeline.upscale_tensor(image, cancel=broken_cancel)
    assert all(not m._forward_pre_hooks for m in leaves(model))


def test_cancel_is_polled_inside_any_module_network(image):
    """A hand-written network (no diffusers) gets the same checks: the first of its layers polls Cancel."""
    class TwoLayers(FlowSRModel):
        latent_factor, pad_multiple, latent_channels = 4, 16, 48

        def __init__(self):
            super().__init__()
            self.autoencoder = torch.nn.Identity()
            self.denoiser = torch.nn.Sequential(torch.nn.Conv2d(48, 48, 1), torch.nn.Conv2d(48, 48, 1))

        def encode(self, pixels, generator=None):
            return F.pixel_unshuffle(pixels, 4)

        def decode(self, latent):
            return F.pixel_shuffle(latent, 4)

        def velocity(self, x_t, t):
            return self.denoiser(x_t)

    pipe, polls = FlowSRPipeline(TwoLayers()), []
    pipe.upscale_tensor(image, tile_size=0, cancel=lambda: polls.append(1) and False)
    # before the tile's encoder-and-first-step, its decoder and its rows' colour fix, and before each of the
    # velocity call's 2 layers
    assert len(polls) == 3 + 2


class OutOfMemoryAbove(contextlib.AbstractContextManager):
    """Make the model's velocity raise CUDA's out-of-memory error for inputs larger than ``limit`` cells."""

    def __init__(self, model, limit):
        self.model, self.limit, self.sizes = model, limit, []

    def __enter__(self):
        original = type(self.model).velocity

        def velocity(model, x_t, t):
            self.sizes.append(tuple(x_t.shape))
            if x_t.shape[0] * x_t.shape[-1] * x_t.shape[-2] > self.limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return original(model, x_t, t)
        self.model.velocity = velocity.__get__(self.model)
        return self

    def __exit__(self, *exc):
        del self.model.velocity


def test_out_of_memory_backs_off_to_smaller_tiles(tiny_pipeline, image):
    large = F.interpolate(image, scale_factor=4, mode="bilinear")  # 96 x 128 -> latent 96 x 128 at x4
    with OutOfMemoryAbove(tiny_pipeline.model, limit=40 * 40) as oom:
        out = tiny_pipeline.upscale_tensor(large, tile_size=64, tile_overlap=8, tile_batch=2)
    assert out.shape == (1, 3, 384, 512)
    assert oom.sizes[0][0] == 2 and max(s[-1] for s in oom.sizes[-3:]) <= 32


def test_out_of_memory_gives_up_with_a_clear_error(tiny_pipeline, image):
    with OutOfMemoryAbove(tiny_pipeline.model, limit=1), pytest.raises(OutOfMemoryError, match="out of memory"):
        tiny_pipeline.upscale_tensor(image, tile_size=32)


def test_tiling_shrinks_batch_first_then_size():
    assert Tiling(96, 32, 4).shrunk() == Tiling(96, 32, 2)
    assert Tiling(96, 32, 1).shrunk() == Tiling(48, 12, 1)
    assert Tiling(0, 0, 1).shrunk().size == 64
    assert Tiling(16, 4, 1).shrunk() is None


def test_half_precision_overflow_in_the_decoder_falls_back_to_fp32(image):
    class Overflowing(FlowSRModel):
        latent_factor, pad_multiple, latent_channels = 4, 4, 48

        def __init__(self):
            super().__init__()
            self.autoencoder = torch.nn.Linear(1, 1).half()
            self.denoiser = torch.nn.Linear(1, 1)

        def encode(self, pixels, generator=None):
            return F.pixel_unshuffle(pixels.float(), 4)

        def decode(self, latent):
            overflow = torch.inf if self.autoencoder.weight.dtype == torch.float16 else 0.0
            return F.pixel_shuffle(latent.float(), 4) + overflow

        def velocity(self, x_t, t):
            return torch.zeros_like(x_t)

    model = Overflowing()
    out = FlowSRPipeline(model).upscale_tensor(image, tile_size=0, color_fix="none")
    assert torch.isfinite(out).all() and model.autoencoder.weight.dtype == torch.float16


def test_padding_reflects_then_replicates():
    assert padded_positions(0, 8, 3, 8).tolist() == [0, 1, 2, 1, 0, 0, 0, 0]
    assert padded_positions(0, 4, 1, 4).tolist() == [0, 0, 0, 0]


def test_tiny_inputs_are_padded_to_the_least_latent_side_the_network_knows(image):
    torch.manual_seed(0)
    model = TinyFlowSR({**TINY_CONFIG, "min_latent_side": 12})
    sides = []
    original = type(model).velocity
    model.velocity = lambda x_t, t: sides.append(tuple(x_t.shape[-2:])) or original(model, x_t, t)
    pipeline = FlowSRPipeline(model)
    flat = torch.full((1, 3, 2, 3), 0.3)
    out = pipeline.upscale_tensor(flat, scale=4, tile_size=0, color_fix="none")
    big = pipeline.upscale_tensor(torch.full((1, 3, 12, 12), 0.3), scale=4, tile_size=0, color_fix="none")
    assert sides == [(12, 12), (12, 12)]  # 48 px: a multiple of 16, and 12 latent pixels
    assert torch.equal(out, big[..., :8, :12])  # the network saw the same flat 12 x 12 latent
    small = image[..., :5, :7]
    expected = reference_upscale(model, small, 4, flow.schedule("uniform", 1).float())
    assert (pipeline.upscale_tensor(small, scale=4, tile_size=0, color_fix="none") - expected).abs().max() < 1 / 510


def test_float_images_on_the_0_255_scale_are_refused_and_small_overshoot_is_taken(tiny_pipeline):
    on_255_scale = np.full((6, 5, 3), 200.0, np.float32)
    with pytest.raises(BadInputError, match="divide an image in 0..255 by 255"):
        tiny_pipeline.upscale(on_255_scale, scale=2)
    with pytest.raises(BadInputError, match="divide an image in 0..255 by 255"):
        tiny_pipeline.upscale(torch.full((3, 6, 5), 200.0), scale=2)
    with pytest.raises(BadInputError, match="run from 200 to 200"):
        tiny_pipeline.upscale_tensor(torch.full((1, 3, 6, 5), 200.0), scale=2)
    overshoot = np.full((6, 5, 3), 1.02, np.float32)
    assert tiny_pipeline.upscale(overshoot, scale=2).shape == (12, 10, 3)


@pytest.mark.parametrize("options,message", [
    (dict(scale=0), "scale"), (dict(scale=9), "scale"), (dict(steps=0), "steps"), (dict(schedule="ddim"), "schedule"),
    (dict(color_fix="auto"), "colour fix"), (dict(tile_size=4), "tile size"),
    (dict(tile_size=32, tile_overlap=32), "overlap"), (dict(tile_batch=0), "tile batch"), (dict(seed=-1), "seed"),
    (dict(seed="7"), "seed"),
])
def test_bad_options_are_named(tiny_pipeline, image, options, message):
    with pytest.raises(BadInputError, match=message):
        tiny_pipeline.upscale_tensor(image, **options)


def test_a_channels_last_tensor_or_channels_first_array_is_told_the_layout(tiny_pipeline):
    with pytest.raises(BadInputError, match=r"got 48 .*CHW or BCHW.*tensor.permute\(2, 0, 1\)"):
        tiny_pipeline.upscale(torch.rand(48, 32, 3))
    with pytest.raises(BadInputError, match=r"got 8 .*HWC or BHWC.*array.transpose\(1, 2, 0\)"):
        tiny_pipeline.upscale(np.random.rand(3, 16, 8).astype(np.float32))


def test_bad_shapes_and_kinds(tiny_pipeline):
    with pytest.raises(BadInputError, match="channels"):
        tiny_pipeline.upscale(torch.rand(5, 8, 8))
    with pytest.raises(BadInputError, match="mode"):
        tiny_pipeline.upscale(Image.new("F", (8, 8)))
    with pytest.raises(BadInputError, match="list"):
        tiny_pipeline.upscale([[0, 1]])
    with pytest.raises(BadInputError, match="uint8"):
        tiny_pipeline.upscale(np.zeros((4, 4, 3), dtype=np.int64))
    for empty in (np.zeros((0, 5, 3), np.float32), np.zeros((0, 5, 3), np.uint8), torch.zeros(3, 0, 5)):
        with pytest.raises(BadInputError, match="empty"):
            tiny_pipeline.upscale(empty)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "1"])
def test_pil_modes_come_back_in_their_family(tiny_pipeline, mode):
    image = Image.new("RGBA", (9, 7), (200, 30, 40, 128)).convert(mode)
    out = tiny_pipeline.upscale(image, scale=2)
    expected = {"P": "RGB", "CMYK": "RGB", "1": "L"}.get(mode, mode)
    assert out.size == (18, 14) and out.mode == expected
    if "A" in mode:
        assert abs(np.asarray(out)[..., -1].astype(float).mean() - 128) < 2  # alpha resized, not diffused


def test_sixteen_bit_and_tiny_images(tiny_pipeline):
    deep = Image.fromarray((np.linspace(0, 65535, 30).reshape(5, 6)).astype(np.uint16))
    out = tiny_pipeline.upscale(deep, scale=2)
    assert out.mode == "I;16" and out.size == (12, 10) and np.asarray(out).max() > 255
    assert tiny_pipeline.upscale(Image.new("RGB", (1, 1)), scale=4).size == (4, 4)


def test_numpy_and_torch_keep_their_layout(tiny_pipeline):
    assert tiny_pipeline.upscale(np.zeros((5, 6, 3), np.uint8), scale=2).shape == (10, 12, 3)
    batch = tiny_pipeline.upscale(np.random.rand(2, 5, 6, 4).astype(np.float32), scale=2)
    assert batch.shape == (2, 10, 12, 4) and batch.dtype == np.float32
    assert tiny_pipeline.upscale(np.zeros((5, 6), np.uint16), scale=2).dtype == np.uint16
    assert tiny_pipeline.upscale(torch.rand(1, 5, 6), scale=2).shape == (1, 10, 12)
    assert tiny_pipeline.upscale(torch.rand(2, 3, 5, 6), scale=2).shape == (2, 3, 10, 12)


def test_automatic_tiles_follow_free_memory(tiny_pipeline, monkeypatch):
    import flowsr.pipeline as pipeline

    monkeypatch.setattr(tiny_pipeline.model, "cpu_tile_size", None)  # the memory rule alone, as on a GPU

    def tiling(free, size):
        monkeypatch.setattr(pipeline, "free_memory", lambda device: free)
        return tiny_pipeline._tiling(size, None, None, None)

    assert tiling(80 * 2 ** 30, (2048, 2048)).size == 0  # fits whole: no tiles
    assert tiling(80 * 2 ** 30, (16384, 16384)).size == 128
    roomy, tight = tiling(5 * 2 ** 30, (16384, 16384)), tiling(2 ** 30, (16384, 16384))
    assert tight.size < roomy.size and tight.batch <= roomy.batch
    assert tiling(2 ** 20, (16384, 16384)) == Tiling(16, 5, 1)  # the smallest tile, however little is free
    assert tiling(None, (512, 512)).size == tiny_pipeline.model.default_tile_size  # unknown (MPS): the default


def test_on_the_cpu_an_automatic_tile_is_at_most_the_models_cpu_tile(tiny_pipeline, image, monkeypatch):
    import flowsr.pipeline as pipeline

    monkeypatch.setattr(pipeline, "free_memory", lambda device: 80 * 2 ** 30)  # room for any image whole
    cap = tiny_pipeline.model.cpu_tile_size
    assert tiny_pipeline._tiling((4096, 4096), None, None, None).size == cap
    assert tiny_pipeline._tiling((4096, 4096), 0, None, None).size == 0  # asked for: no tiles
    assert tiny_pipeline._tiling((4096, 4096), None, cap, None).size == 2 * cap  # room for the overlap asked
    # an image within one such tile runs as one tile, exactly as untiled
    assert torch.equal(tiny_pipeline.upscale_tensor(image), tiny_pipeline.upscale_tensor(image, tile_size=0))


def test_an_overlap_too_large_for_the_automatic_tile_is_refused_before_any_work(tiny_pipeline, image, monkeypatch):
    import flowsr.pipeline as pipeline

    monkeypatch.setattr(pipeline, "free_memory", lambda device: 2 ** 24)  # forces tiles of 16
    calls = []
    with pytest.raises(BadInputError, match="overlap 200 is more than half the tile size.*automatically"):
        tiny_pipeline.upscale_tensor(image, tile_overlap=200, progress=lambda d, t: calls.append(t))
    assert calls == []


def test_fp16_on_the_cpu_is_refused_with_what_to_use_instead():
    from flowsr.devices import resolve_dtype

    with pytest.raises(BadInputError, match="fp16 on the CPU.*use fp32"):
        resolve_dtype("fp16", "cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("bf16", "cpu") == torch.bfloat16


def test_an_output_beyond_the_pixel_limit_is_refused_before_any_work(tiny_pipeline):
    assert checked_output_size(4096, 4096, 8) == (32768, 32768)  # exactly MAX_OUTPUT_PIXELS: allowed
    huge = torch.zeros(1, 3, 1, 1).expand(1, 3, 4097, 4096)  # no memory behind it: nothing may read it
    with pytest.raises(BadInputError, match="4096x4097 pixels at scale 8 make a 32768x32776 output, more than"):
        tiny_pipeline.upscale_tensor(huge, scale=8, cancel=lambda: True)  # if let through: no network call


def test_an_array_with_nan_values_is_refused_naming_them(tiny_pipeline):
    array = np.random.rand(16, 16, 3).astype(np.float32)
    array[4:8, 4:8] = np.nan
    with pytest.raises(BadInputError, match="48 NaN"):
        tiny_pipeline.upscale(array)
    with pytest.raises(BadInputError, match="NaN"):
        tiny_pipeline.upscale_tensor(torch.from_numpy(array).permute(2, 0, 1)[None])


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to "
                 "allocate 21474836480 bytes."),
    MemoryError(),
])
def test_running_out_of_cpu_memory_backs_off_then_says_what_to_do(tiny_pipeline, image, monkeypatch, error):
    sizes = []

    def velocity(x_t, t):
        sizes.append(x_t.shape[-1])
        raise error
    monkeypatch.setattr(tiny_pipeline.model, "velocity", velocity)
    with pytest.raises(OutOfMemoryError, match="close other programs"):
        tiny_pipeline.upscale_tensor(image, scale=8, tile_size=0)
    assert sizes[0] == 64 and sizes[-1] == 16  # untiled, then tiles of 64, 32, 16
