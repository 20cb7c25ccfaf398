"""The model that ships inside the package: it loads with no arguments, upscales the README's example, and
its tiles leave no seams (>= 35 dB against the untiled result), and flat inputs stay flat."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from flowsr import FlowSRPipeline
from flowsr.models.tiny import BUILTIN_WEIGHTS

EXAMPLE = Path(__file__).resolve().parents[2] / "assets" / "honey-bee.png"


@pytest.fixture(scope="module")
def builtin():
    return FlowSRPipeline.from_pretrained(device="cpu")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def test_builtin_weights_ship_small_and_load_without_arguments(builtin):
    """No arguments give exactly the shipped weights, in fp32 on the CPU (``auto`` there), ready to run."""
    assert BUILTIN_WEIGHTS.stat().st_size < 25 * 2 ** 20
    shipped = load_file(str(BUILTIN_WEIGHTS))
    state = builtin.model.state_dict()
    assert state.keys() == shipped.keys()
    assert all(torch.equal(value, shipped[key].float()) for key, value in state.items())
    assert {value.dtype for value in state.values()} == {torch.float32} and builtin.model.device.type == "cpu"
    assert not builtin.model.training and not any(p.requires_grad for p in builtin.model.parameters())


def test_builtin_upscales_the_example_and_changes_it_sensibly(builtin):
    image = Image.open(EXAMPLE).convert("RGB").crop((64, 48, 192, 144))  # 128 x 96 keeps the test quick
    out = builtin.upscale(image, scale=4)
    assert out.size == (512, 384) and out.mode == "RGB"
    bicubic = np.asarray(image.resize(out.size, Image.BICUBIC))
    ours = np.asarray(out)
    assert 25 < psnr(ours, bicubic) < 60  # close to the input's content, yet not a plain resize


def test_builtin_tiles_leave_no_seams(builtin):
    image = Image.open(EXAMPLE).convert("RGB").crop((0, 0, 192, 128))  # latent 192 x 128 at x4
    whole = np.asarray(builtin.upscale(image, scale=4, tile_size=0))
    tiled = np.asarray(builtin.upscale(image, scale=4, tile_size=64, tile_overlap=16, tile_batch=2))
    assert psnr(whole, tiled) >= 35


@pytest.mark.parametrize("colour,size", [((200, 30, 30), (1, 1)), ((128, 128, 128), (4, 4)),
                                         ((128, 128, 128), (64, 64)), ((30, 60, 200), (17, 23))])
def test_builtin_keeps_flat_inputs_flat(builtin, colour, size):
    """A flat input comes back flat within a grey level (issue #11), through the colour fixes' flat-area rule:
    the network alone leaves pattern noise of 3-4 levels inside and up to 13 at the border (version 3). Tiny
    inputs are padded to the network's least latent side, so they are answered like a flat area, not like the
    border of an image (up to 52 levels off unpadded with version 2)."""
    for color_fix in ("wavelet", "adain"):
        out = np.asarray(builtin.upscale(Image.new("RGB", size, colour), scale=4, color_fix=color_fix)).astype(int)
        assert out.shape == (4 * size[1], 4 * size[0], 3)
        assert np.abs(out - np.array(colour)).max() <= 1


def test_builtin_without_colour_fix_keeps_tiny_flat_inputs_near_their_colour(builtin):
    """The network's own answer to a padded 1x1 input (``none`` keeps it as it is): near the colour."""
    out = np.asarray(builtin.upscale(Image.new("RGB", (1, 1), (200, 30, 30)), scale=4, color_fix="none"))
    assert np.abs(out.astype(int) - np.array((200, 30, 30))).max() <= 8
