"""Tiles cover every pixel, blend to the identity for local maps, release final rows, and share normalisation
statistics per image."""
import pytest
import torch
from torch import nn

from flowsr.tiling import Band, TilePlan, Tiling, downscale_to_fit, gaussian_bump, shared_group_norm_statistics, \
    tile_starts


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


def blend(plan: TilePlan, fn, x: torch.Tensor, factor: int = 1) -> torch.Tensor:
    """``fn`` over the plan's tiles of ``x`` (on the grid), blended at ``factor`` times the grid's resolution."""
    band = Band(len(x), x.shape[1], x.shape[-1] * factor)
    weights = plan.weights(factor)
    for group in plan.groups:
        results = fn(torch.stack([x[tile.image, :, tile.rows, tile.cols] for tile in group]))
        for tile, result in zip(group, results):
            rows = slice(tile.rows.start * factor, tile.rows.stop * factor)
            cols = slice(tile.cols.start * factor, tile.cols.stop * factor)
            band.add(tile.image, rows, cols, result, weights)
    return band.pop(x.shape[-2] * factor)


def test_pointwise_map_is_reproduced_by_tiles_of_several_images_per_call():
    x = torch.randn(2, 3, 40, 56)
    plan = TilePlan((40, 56), 2, Tiling(16, 6, 3), passes=1)
    assert max(len(group) for group in plan.groups) == 3 and len({t.image for t in plan.groups[1]}) == 2
    assert torch.allclose(blend(plan, lambda t: t * 2 + 1, x), x * 2 + 1, atol=1e-5)


def test_tiles_blended_at_a_finer_resolution_reproduce_the_upsampled_whole():
    x = torch.randn(1, 3, 8, 12)
    upsample = lambda t: t.repeat_interleave(8, -1).repeat_interleave(8, -2)  # noqa: E731
    plan = TilePlan((8, 12), 1, Tiling(4, 2), passes=1)
    up = blend(plan, upsample, x, factor=8)
    assert torch.allclose(up, upsample(x), atol=1e-5)
    assert not torch.allclose(blend(plan, lambda t: upsample(t.flip(-1)), x, factor=8), upsample(x), atol=0.1)


def test_a_single_tile_comes_back_exactly():
    x = torch.randn(2, 3, 8, 8)
    plan = TilePlan((8, 8), 2, Tiling(0, 0), passes=1)
    assert plan.whole and torch.equal(blend(plan, torch.sin, x), x.sin())


def test_weights_bump_only_along_the_axes_where_tiles_overlap():
    rows_plan = TilePlan((80, 8), 1, Tiling(16, 4), passes=1)  # tiles overlap along the rows only
    assert rows_plan.tile_shape == (32, 8)  # a 16x16 tile's area on a grid 8 wide
    rows_tiled = rows_plan.weights(2)
    assert torch.equal(rows_tiled, gaussian_bump(64)[:, None].expand(64, 16))
    cols_tiled = TilePlan((8, 80), 1, Tiling(16, 4), passes=1).weights(2)
    assert torch.equal(cols_tiled, rows_tiled.T)
    assert torch.equal(TilePlan((8, 8), 1, Tiling(16, 4), passes=1).weights(), torch.ones(8, 8))


def test_a_thin_grid_takes_tiles_of_the_same_area_not_more_calls():
    plan = TilePlan((8, 4000), 1, Tiling(128, 16), passes=1)
    assert plan.tile_shape == (8, 2048) and len(plan.groups) == 2  # a 128x128 tile's area; square tiles: 36
    x = torch.randn(1, 2, 8, 4000)
    assert torch.allclose(blend(plan, torch.sin, x), x.sin(), atol=1e-5)
    assert TilePlan((4000, 8), 1, Tiling(128, 16), passes=1).tile_shape == (2048, 8)
    assert TilePlan((300, 200), 1, Tiling(128, 16), passes=1).tile_shape == (128, 128)


def test_plan_length_counts_every_network_call():
    plan = TilePlan((50, 30), 2, Tiling(16, 4, 4), passes=3)
    tiles = len(tile_starts(50, 16, 4)) * len(tile_starts(30, 16, 4)) * 2
    assert len(plan.tiles) == tiles and len(plan) == 3 * -(-tiles // 4)
    assert sum(len(group) for group in plan.groups) == tiles


def test_rows_are_final_only_once_no_later_tile_touches_them():
    plan = TilePlan((50, 30), 2, Tiling(16, 4, 3), passes=1)
    for index in range(len(plan.groups)):
        final = plan.final_rows(index)
        later = [tile for group in plan.groups[index + 1:] for tile in group]
        assert all(tile.rows.start >= final for tile in later)
        assert not later or any(tile.rows.start == final for tile in later)  # and not later than need be
    assert plan.final_rows(len(plan.groups) - 1) == 50


def test_band_holds_only_the_rows_tiles_still_touch():
    x = torch.randn(1, 2, 200, 16)
    plan = TilePlan((200, 16), 1, Tiling(16, 4), passes=1)
    band, weights, out, widest = Band(1, 2, 16), plan.weights(), [], 0
    for index, group in enumerate(plan.groups):
        for tile in group:
            band.add(tile.image, tile.rows, tile.cols, x[0, :, tile.rows, tile.cols], weights)
        widest = max(widest, band.sums.shape[2])
        out.append(band.pop(plan.final_rows(index)))
    assert torch.allclose(torch.cat(out, 2), x, atol=1e-5) and widest <= 16


def test_shrinking_halves_the_batch_then_the_tile():
    assert Tiling(96, 32, 4).shrunk() == Tiling(96, 32, 2)
    assert Tiling(96, 32, 1).shrunk() == Tiling(48, 12, 1)
    assert Tiling(0, 0, 1).shrunk().size == 64
    assert Tiling(16, 4, 1).shrunk() is None


def test_downscale_to_fit_keeps_multiples():
    small = downscale_to_fit(torch.zeros(1, 3, 1000, 600), 256, multiple=8)
    assert max(small.shape[-2:]) <= 256 + 8 and small.shape[-2] % 8 == 0 and small.shape[-1] % 8 == 0


def test_shared_group_norm_statistics_normalise_each_images_tiles_like_that_whole_image():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.Conv2d(8, 3, 1))
    x = torch.randn(2, 3, 32, 32) + torch.linspace(-3, 3, 32)  # statistics differ from tile to tile
    x[1] = x[1] * 4 + 2  # and from image to image
    whole = net(x)
    plan = TilePlan((32, 32), 2, Tiling(8, 2, 3), passes=1)
    with torch.no_grad():
        naive = blend(plan, net, x)
        with shared_group_norm_statistics(net, lambda: [net(image[None]) for image in x]) as select:
            images = iter(plan.groups)

            def tiles_with_their_statistics(tiles):
                select([tile.image for tile in next(images)])
                return net(tiles)
            shared = blend(plan, tiles_with_their_statistics, x)
    assert torch.allclose(shared, whole, atol=1e-4)
    assert (naive - whole).abs().max() > 0.1
    assert "forward" not in vars(net[1])  # restored afterwards


def test_an_automatic_tile_is_large_enough_for_the_overlap_asked_for_whatever_the_free_memory():
    common = dict(output_pixels=4096 ** 2, latent_factor=8, bytes_per_pixel=2600.0, default_size=96,
                  default_overlap=32)
    for free in (2 ** 28, 2 ** 31, 2 ** 34, None):
        tiling = Tiling.choose(None, 40, None, free=free, **common)
        assert tiling.overlap == 40 and tiling.size >= 80, (free, tiling)
    assert Tiling.choose(None, None, None, free=2 ** 28, **common).size < 80  # no overlap asked: memory decides


def test_a_band_given_its_height_blends_like_a_growing_one_without_reallocating():
    tiles = [(slice(0, 6), slice(0, 5)), (slice(4, 10), slice(3, 8))]
    grown, fixed = Band(1, 2, 8), Band(1, 2, 8, height=10)
    storage = fixed.sums.data_ptr()
    for rows, cols in tiles:
        values = torch.rand(2, 6, 5)
        for band in (grown, fixed):
            band.add(0, rows, cols, values, torch.ones(6, 5))
    assert fixed.sums.data_ptr() == storage
    expected, result = grown.pop(10), fixed.pop(10)
    assert torch.equal(expected.isnan(), result.isnan())
    assert torch.allclose(expected.nan_to_num(), result.nan_to_num())
