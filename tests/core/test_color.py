import pytest
import torch

from flowsr.color import adain_color_fix, color_fix, wavelet_split


def test_wavelet_split_is_exact_and_low_is_smooth():
    x = torch.rand(1, 3, 64, 64)
    high, low = wavelet_split(x)
    assert torch.allclose(high + low, x, atol=1e-6)
    assert low.diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean() / 4


def test_wavelet_fix_takes_reference_colour_and_keeps_content_detail():
    content = torch.rand(1, 3, 64, 64)
    reference = torch.full_like(content, 0.2)
    fixed = color_fix(content, reference, "wavelet")
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
    assert color_fix(x, x * 0, "none") is x
    with pytest.raises(ValueError):
        color_fix(x, x, "histogram")
