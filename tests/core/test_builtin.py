"""The model that ships inside the package: it loads with no arguments, upscales the README's example, and
its tiles leave no seams (>= 35 dB against the untiled result)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowsr import BUILTIN_MODEL_NAME, FlowSRPipeline
from flowsr.models.tiny import BUILTIN_WEIGHTS

EXAMPLE = Path(__file__).resolve().parents[2] / "assets" / "honey-bee.png"


@pytest.fixture(scope="module")
def builtin():
    return FlowSRPipeline.from_pretrained(device="cpu")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def test_builtin_weights_ship_small_and_load_without_arguments(builtin):
    assert BUILTIN_WEIGHTS.stat().st_size < 25 * 2 ** 20
    assert BUILTIN_MODEL_NAME == "FlowSR tiny (built-in)"
    assert builtin.model.dtype.is_floating_point and str(builtin.model.device) == "cpu"


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
