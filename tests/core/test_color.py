import pytest
import torch
import torch.nn.functional as F

from flowsr.color import MARGINS, adain_color_fix, apply_color_fix, channel_statistics, wavelet_blur, wavelet_split


def test_wavelet_split_is_exact_and_low_is_smooth():
    x = torch.rand(1, 3, 64, 64)
    high, low = wavelet_split(x)
    assert torch.allclose(high + low, x, atol=1e-6)
    assert low.diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean() / 4


def test_wavelet_fix_takes_reference_colour_and_keeps_content_detail():
    content = torch.rand(1, 3, 64, 64)
    reference = torch.full_like(content, 0.2)
    fixed = apply_color_fix(content, reference, "wavelet")
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


def test_wavelet_fix_of_a_rectangle_read_with_the_margin_equals_the_whole_fix():
    content, reference = torch.rand(1, 3, 100, 90), torch.rand(1, 3, 100, 90)
    whole = apply_color_fix(content, reference, "wavelet")
    margin = MARGINS["wavelet"]
    rows, cols = slice(40 - margin, 60 + margin), slice(0, 30 + margin)  # inside, and at the left border
    part = apply_color_fix(content[..., rows, cols], reference[..., rows, cols], "wavelet")
    assert torch.allclose(part[..., margin:-margin, :30], whole[..., 40:60, :30], atol=1e-5)
    short = slice(40 - margin + 1, 60 + margin)
    too_little = apply_color_fix(content[..., short, cols], reference[..., short, cols], "wavelet")
    assert not torch.allclose(too_little[..., margin - 1:-margin, :30], whole[..., 40:60, :30], atol=1e-5)


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
