import pytest
import torch
import torch.nn.functional as F

from flowsr.color import (FLAT_RADIUS, FLAT_RAMP, MARGINS, _local_max, adain_color_fix, apply_color_fix,
                          channel_statistics, keep_flat_areas, wavelet_blur, wavelet_color_fix, wavelet_split)


def test_wavelet_split_is_exact_and_low_is_smooth():
    x = torch.rand(1, 3, 64, 64)
    high, low = wavelet_split(x)
    assert torch.allclose(high + low, x, atol=1e-6)
    assert low.diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean() / 4


def test_wavelet_fix_takes_reference_colour_and_keeps_content_detail():
    content = torch.rand(1, 3, 64, 64)
    reference = torch.full_like(content, 0.2)
    fixed = wavelet_color_fix(content, reference)
    assert abs(fixed.mean().item() - 0.2) < 0.02
    assert torch.allclose(fixed - wavelet_split(reference)[1], wavelet_split(content)[0], atol=1e-6)
    assert fixed.std() > 0.25  # the content's detail survives the flat reference


def test_adain_matches_channel_statistics():
    content, reference = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16) * 0.3 + 0.5
    fixed = adain_color_fix(content, reference)
    assert torch.allclose(fixed.mean((2, 3)), reference.mean((2, 3)), atol=1e-5)
    assert torch.allclose(fixed.std((2, 3)), reference.std((2, 3)), atol=1e-3)


def test_none_and_unknown():
    x = torch.rand(1, 3, 8, 8)
    assert apply_color_fix(x, x * 0, "none") is x
    with pytest.raises(ValueError):
        apply_color_fix(x, x, "histogram")


def half_flat_reference(top: int = 0) -> torch.Tensor:
    """100 x 90, random but for a flat colour from row ``top`` and column 40 on: photo-like content beside a
    flat area."""
    reference = torch.rand(1, 3, 100, 90)
    reference[..., top:, 40:] = torch.tensor([0.3, 0.5, 0.7])[:, None, None]
    return reference


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_a_fix_of_a_rectangle_read_with_the_margin_equals_the_whole_fix(method):
    # The flat area starts on the first row the rectangles below read: a read one row short sees it flat further.
    content, reference = torch.rand(1, 3, 100, 90), half_flat_reference(top=40 - MARGINS["adain"] + 1)
    statistics = (channel_statistics(content), channel_statistics(reference))  # adain's come from the whole image
    whole = apply_color_fix(content, reference, method, statistics)
    margin = MARGINS[method]
    for rows, cols, inner in [(slice(40 - margin, 60 + margin), slice(0, 30 + margin), slice(0, 30)),  # left border
                              (slice(40 - margin, 60 + margin), slice(50 - margin, 90), slice(50, 90))]:  # flat edge
        part = apply_color_fix(content[..., rows, cols], reference[..., rows, cols], method, statistics)
        at = slice(inner.start - cols.start, inner.stop - cols.start)
        assert torch.allclose(part[..., margin:-margin, at], whole[..., 40:60, inner], atol=1e-5)
    short = slice(40 - margin + 1, 60 + margin)
    too_little = apply_color_fix(content[..., short, :], reference[..., short, :], method, statistics)
    assert not torch.allclose(too_little[..., margin - 1:-margin, :], whole[..., 40:60, :], atol=1e-5)


def test_flat_areas_of_the_reference_come_back_exactly_flat_and_the_rest_untouched():
    content, reference = torch.rand(1, 3, 100, 90), half_flat_reference()
    kept = keep_flat_areas(content, reference)
    deep_inside = 40 + FLAT_RADIUS + FLAT_RAMP
    assert torch.equal(kept[..., deep_inside:], reference[..., deep_inside:])
    near_content = 40 + FLAT_RADIUS - FLAT_RAMP
    assert torch.equal(kept[..., :near_content], content[..., :near_content])
    distance = (kept - reference).abs().amax((0, 1, 2))[near_content:deep_inside]
    assert (distance.diff() < 0).all()  # a ramp, not a step, from the model's pixels to the flat colour


def test_a_reference_that_varies_by_a_grey_level_is_not_flat():
    content = torch.rand(1, 3, 64, 64)
    gradient = torch.linspace(0.4, 0.4 + 8 / 255, 64).expand(1, 3, 64, 64)  # one level every 8 pixels
    assert torch.equal(keep_flat_areas(content, gradient), content)
    assert torch.equal(apply_color_fix(content, reference := torch.full_like(content, 0.4), "none"), content)
    assert torch.equal(apply_color_fix(content, reference, "wavelet"), reference)


def test_adain_takes_statistics_from_elsewhere_when_given():
    content, reference = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    small_content, small_reference = content[..., ::2, ::2] * 2, reference[..., ::2, ::2] + 0.5
    statistics = (channel_statistics(small_content), channel_statistics(small_reference))
    fixed = apply_color_fix(content, reference, "adain", statistics)
    expected = (content - statistics[0][0]) / statistics[0][1] * statistics[1][1] + statistics[1][0]
    assert torch.allclose(fixed, expected) and not torch.allclose(fixed, adain_color_fix(content, reference))


@pytest.mark.parametrize("dilation", [1, 2, 16])
def test_wavelet_blur_is_the_dilated_3x3_binomial_kernel_with_replicate_padding(dilation):
    image = torch.rand(2, 3, 40, 37)
    kernel = (torch.tensor([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]) / 16).expand(3, 1, 3, 3)
    padded = F.pad(image, (dilation,) * 4, mode="replicate")
    expected = F.conv2d(padded, kernel, groups=3, dilation=dilation)
    assert torch.allclose(wavelet_blur(image, dilation), expected, atol=1e-6)


@pytest.mark.parametrize("radius", [1, 2, 5, 8])
def test_local_max_is_the_max_pool_cut_at_the_edges(radius):
    image = half_flat_reference(top=30)[..., :77]
    pooled = F.max_pool2d(image, 2 * radius + 1, stride=1, padding=radius)  # pads with -inf: cut at the edges
    assert torch.equal(_local_max(image, radius), pooled)
