"""Tiles cover every pixel, blend to the identity for local maps, and share normalisation statistics."""
import pytest
import torch
from torch import nn

from flowsr.tiling import (count_batches, downscale_to_fit, shared_group_norm_statistics, tile_grid, tile_starts,
                           tiled_map)


@pytest.mark.parametrize("size,tile,overlap", [(10, 16, 4), (16, 16, 4), (17, 16, 4), (100, 32, 8), (33, 16, 15)])
def test_tiles_cover_everything_and_stay_inside(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    covered = torch.zeros(size, dtype=torch.bool)
    for start in starts:
        assert 0 <= start and start + min(tile, size) <= size
        covered[start:start + tile] = True
    assert covered.all()
    for a, b in zip(starts, starts[1:]):
        assert b - a <= tile - overlap  # neighbours overlap by at least `overlap`


def test_pointwise_map_is_reproduced_exactly_by_tiles():
    x = torch.randn(2, 3, 40, 56)
    out = tiled_map(lambda t: t * 2 + 1, x, tile=16, overlap=6, batch_size=3)
    assert torch.allclose(out, x * 2 + 1, atol=1e-5)


def test_scale_factors_map_tiles_between_grids():
    x = torch.randn(1, 3, 64, 96)  # pixels; grid of 8 x 12 with in_factor 8
    down = tiled_map(lambda t: nn.functional.avg_pool2d(t, 8), x, tile=4, overlap=2, in_factor=8)
    assert torch.allclose(down, nn.functional.avg_pool2d(x, 8), atol=1e-5)
    up = tiled_map(lambda t: t.repeat_interleave(8, -1).repeat_interleave(8, -2), down, tile=4, overlap=2,
                   out_factor=8)
    assert up.shape == x.shape


def test_single_tile_returns_the_function_output_untouched():
    x = torch.randn(2, 3, 8, 8)
    calls = []
    out = tiled_map(lambda t: calls.append(len(t)) or t.sin(), x, tile=16, overlap=4, batch_size=1)
    assert torch.equal(out, x.sin()) and calls == [1, 1]


def test_progress_counts_match_calls():
    calls = []
    tiled_map(lambda t: t, torch.zeros(2, 1, 50, 30), tile=16, overlap=4, batch_size=4, on_batch=lambda: calls.append(1))
    assert len(calls) == count_batches(50, 30, 16, 4, 4, images=2)


def test_downscale_to_fit_keeps_multiples():
    small = downscale_to_fit(torch.zeros(1, 3, 1000, 600), 256, multiple=8)
    assert max(small.shape[-2:]) <= 256 + 8 and small.shape[-2] % 8 == 0 and small.shape[-1] % 8 == 0


def test_shared_group_norm_statistics_normalise_tiles_like_the_whole():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.Conv2d(8, 3, 1))
    x = torch.randn(1, 3, 32, 32) + torch.linspace(-3, 3, 32)  # statistics differ from tile to tile
    whole = net(x)
    with torch.no_grad():
        naive = tiled_map(net, x, tile=8, overlap=2)
        with shared_group_norm_statistics(net, lambda: net(x)):
            shared = tiled_map(net, x, tile=8, overlap=2)
    assert torch.allclose(shared, whole, atol=1e-4)
    assert (naive - whole).abs().max() > 0.1
    assert "forward" not in vars(net[1])  # restored afterwards
