"""Fixtures for the pipeline tests: a tiny pixel-space FlowSR model with random weights."""
import pytest
import torch

from flowsr import FlowSRPipeline
from flowsr.models.tiny import TinyFlowSR, save_tiny

TINY_CONFIG = {
    "latent_factor": 4,
    "unet": {"block_out_channels": [16, 32], "down_block_types": ["DownBlock2D"] * 2,
             "up_block_types": ["UpBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 8},
    "min_latent_side": 0,  # images as small as the tests' own, unpadded
}


@pytest.fixture(scope="session")
def tiny_pipeline() -> FlowSRPipeline:
    torch.manual_seed(0)
    return FlowSRPipeline(TinyFlowSR(TINY_CONFIG))


@pytest.fixture
def image() -> torch.Tensor:
    """A smooth RGB test pattern (B=1, 3, 24, 32) in [0, 1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 24), torch.linspace(0, 1, 32), indexing="ij")
    return torch.stack([x, y, (x * y) ** 0.5])[None]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_pipeline):
    """The tiny model saved in our small-model file format."""
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_tiny(tiny_pipeline.model, path)
    return path
