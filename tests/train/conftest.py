"""Fixtures for the trainer tests: a handful of synthetic photos and configs of a very small model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

#: A TinyFlowSR architecture small enough for a training step in tens of milliseconds.
SMALL_UNET = ("{latent_factor: 4, unet: {block_out_channels: [16, 32], down_block_types: [DownBlock2D, DownBlock2D],"
              " up_block_types: [UpBlock2D, UpBlock2D], layers_per_block: 1, norm_num_groups: 8}}")


def pytest_configure(config):
    config.addinivalue_line("markers", "multiprocess: starts several processes with accelerate launch (slower)")


def synthetic_photo(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients, stripes and a checkerboard: structure at several scales, like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    fx, fy = rng.uniform(3, 12, size=2)
    image = np.stack([0.5 + 0.5 * np.sin(x / fx + seed), 0.5 + 0.5 * np.cos(y / fy),
                      0.1 + 0.8 * (((x // 8) + (y // 8)) % 2)], axis=-1)
    return (image * 255).round().astype(np.uint8)


@pytest.fixture(scope="session")
def make_photo():
    return synthetic_photo


@pytest.fixture(scope="session")
def small_model_config() -> dict:
    return yaml.safe_load(SMALL_UNET)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """Six synthetic RGB images of different sizes, plus a broken file and one too small to crop."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(6):
        Image.fromarray(synthetic_photo(72 + 8 * i, 80, i)).save(folder / f"photo{i}.png")
    (folder / "broken.png").write_bytes(b"this is not a PNG")
    Image.fromarray(synthetic_photo(16, 16, 9)).save(folder / "tiny.png")
    return folder


@pytest.fixture(scope="session")
def validation_photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("val")
    Image.fromarray(synthetic_photo(48, 64, 20)).save(folder / "val0.png")
    return folder


@pytest.fixture(scope="session")
def small_run(photos):
    """``small_run(output_dir, **overrides)``: the ``--set`` list of a seconds-long run of a very small model."""
    def overrides(output_dir, **extra) -> list[str]:
        base = {"data.hr": str(photos), "data.crop": 32, "data.batch_size": 2, "data.num_workers": 0,
                "data.repeat": 2, "train.max_steps": 4, "log.every": 1, "checkpoint.every": 0,
                "validation.hr": "null", "output_dir": str(output_dir), "model.config": SMALL_UNET,
                "stage2.adv.channels": 8, "stage2.adv.layers": 2}
        base.update(extra)
        return [f"{key}={value}" for key, value in base.items()]
    return overrides
