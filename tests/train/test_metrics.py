import math
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from flowsr.errors import BadInputError
from train import evaluate, metrics


def pattern(h: int, w: int, seed: int) -> np.ndarray:
    """A deterministic, noise-like uint8 RGB image (no RNG, so the reference values below never drift)."""
    i, j, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return (((i * 7919 + j * 104729 + c * 31 + seed) * 2654435761 % 4294967291) % 256).astype(np.uint8)


def noisy_pair() -> tuple[np.ndarray, np.ndarray]:
    hr = pattern(40, 48, 0)
    sr = np.clip(hr.astype(int) + pattern(40, 48, 1) % 41 - 20, 0, 255).astype(np.uint8)
    return sr, hr


def smooth_image(h: int = 64, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / 3.0
    base = 127 + 60 * np.sin(x) * np.cos(0.7 * y) + 40 * np.sin(0.3 * x + 0.5 * y)
    return np.stack([base, base * 0.8 + 20, 255 - base], axis=-1).clip(0, 255).astype(np.uint8)


def test_y_channel_is_bt601_studio_range():
    colours = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]],
                           dtype=torch.float64).T[:, :, None]  # [3, 5, 1]
    y = metrics.rgb_to_y(colours)[:, 0]
    expected = torch.tensor([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], dtype=torch.float64)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-9)


def test_psnr_of_identical_images_is_inf():
    image = pattern(32, 32, 3)
    assert metrics.psnr_y(image, image, crop_border=4) == math.inf
    result = evaluate.evaluate_pairs([("same", image, image)], scale=4, use_ssimulacra2=False)
    assert result.means["PSNR-Y"] == math.inf
    assert "| same | inf | 1.0000 |" in evaluate.format_table(result)


def test_psnr_of_a_uniform_offset_has_the_closed_form_value():
    a = np.full((24, 24, 3), 100, np.uint8)
    b = np.full((24, 24, 3), 110, np.uint8)
    y_difference = 10 * 219 / 255  # grey levels map to Y with slope 219/255
    assert metrics.psnr_y(a, b, crop_border=2) == pytest.approx(20 * math.log10(255 / y_difference), abs=1e-9)


def test_ssim_of_identical_images_is_one_and_of_constants_has_the_closed_form_value():
    image = pattern(32, 32, 5)
    assert metrics.ssim_y(image, image, crop_border=0) == pytest.approx(1.0, abs=1e-12)
    a, b = torch.full((16, 16), 50.0), torch.full((16, 16), 80.0)
    c1 = (0.01 * 255) ** 2  # no variance: SSIM reduces to its luminance term
    assert metrics.ssim(a, b) == pytest.approx((2 * 50 * 80 + c1) / (50**2 + 80**2 + c1), rel=1e-12)


@pytest.mark.parametrize("border, psnr, ssim", [(0, 30.623622079442328, 0.9850724457906955),
                                                (4, 30.60049449248, 0.9851981751224081)])
def test_matches_scikit_image_reference_values(border, psnr, ssim):
    # Reference: skimage 0.26 rgb2ycbcr(...)[..., 0], peak_signal_noise_ratio(data_range=255) and
    # structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255).
    sr, hr = noisy_pair()
    assert metrics.psnr_y(sr, hr, border) == pytest.approx(psnr, abs=1e-9)
    assert metrics.ssim_y(sr, hr, border) == pytest.approx(ssim, abs=1e-12)


def test_metrics_drop_as_the_image_shifts():
    hr = smooth_image()
    scores = [(metrics.psnr_y(np.roll(hr, shift, axis=1), hr, 4), metrics.ssim_y(np.roll(hr, shift, axis=1), hr, 4))
              for shift in (0, 1, 2, 4)]
    psnrs, ssims = zip(*scores)
    assert psnrs[0] == math.inf and ssims[0] == pytest.approx(1.0)
    assert list(psnrs[1:]) == sorted(psnrs[1:], reverse=True) and psnrs[1] < 40
    assert list(ssims[1:]) == sorted(ssims[1:], reverse=True) and ssims[1] < 0.999


def test_crop_border_ignores_differences_at_the_edges():
    hr = smooth_image(32, 32)
    sr = hr.copy()
    sr[:3] = 0
    sr[:, -3:] = 255
    assert metrics.psnr_y(sr, hr, crop_border=4) == math.inf
    assert metrics.ssim_y(sr, hr, crop_border=4) == pytest.approx(1.0)
    assert metrics.psnr_y(sr, hr, crop_border=0) < 20


def test_every_input_kind_gives_the_same_score():
    sr, hr = noisy_pair()
    reference = metrics.ssim_y(sr, hr, 4)
    as_float_tensor = torch.from_numpy(sr).permute(2, 0, 1).double() / 255 + 1e-4  # rounds back to sr
    assert metrics.ssim_y(as_float_tensor, hr, 4) == reference
    assert metrics.ssim_y(Image.fromarray(sr), Image.fromarray(hr).convert("RGBA"), 4) == reference
    assert metrics.ssim_y(sr.astype(np.float32) / 255, hr, 4) == reference


def test_bad_inputs_are_refused_with_a_reason():
    with pytest.raises(BadInputError, match="at least 11x11"):
        metrics.ssim_y(pattern(8, 30, 0), pattern(8, 30, 1), crop_border=0)
    with pytest.raises(BadInputError, match="too small"):
        metrics.psnr_y(pattern(8, 8, 0), pattern(8, 8, 1), crop_border=4)
    with pytest.raises(BadInputError, match="RGB"):
        metrics.to_rgb255(np.zeros((8, 8), np.uint8))


def save(image: np.ndarray, path) -> None:
    Image.fromarray(image).save(path)


def test_evaluate_folders_pairs_by_name_and_modcrops(tmp_path, capsys):
    sr_dir, gt_dir = tmp_path / "sr", tmp_path / "gt"
    sr_dir.mkdir(), gt_dir.mkdir()
    sr, hr = noisy_pair()
    save(np.pad(hr, ((0, 3), (0, 2), (0, 0))), gt_dir / "a.png")  # GT not a multiple of the scale
    save(sr, sr_dir / "a.png")
    save(hr, gt_dir / "b.png")
    save(hr, sr_dir / "b.bmp")
    save(hr, sr_dir / "extra.png")  # SR files without GT are ignored

    result = evaluate.evaluate_dirs(sr_dir, gt_dir, scale=4, use_ssimulacra2=False)
    assert [row["image"] for row in result.rows] == ["a", "b"]
    assert result.rows[0]["PSNR-Y"] == pytest.approx(30.60049449248, abs=1e-9)
    assert result.rows[1]["PSNR-Y"] == math.inf

    evaluate.main([str(sr_dir), str(gt_dir), "--no-ssimulacra2", "--json", str(tmp_path / "m.json")])
    printed = capsys.readouterr().out
    assert "| image | PSNR-Y | SSIM-Y |" in printed and "| **mean** | inf |" in printed
    assert '"means"' in (tmp_path / "m.json").read_text()


def test_evaluate_reports_missing_and_mismatched_images(tmp_path):
    (tmp_path / "sr").mkdir(), (tmp_path / "gt").mkdir()
    save(pattern(32, 32, 0), tmp_path / "gt" / "a.png")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(tmp_path / "sr"), str(tmp_path / "gt")])
    assert exit_info.value.code == 2
    save(pattern(16, 16, 0), tmp_path / "sr" / "a.png")
    with pytest.raises(BadInputError, match="must match"):
        evaluate.evaluate_dirs(tmp_path / "sr", tmp_path / "gt", scale=4)


def test_optional_metrics_say_why_they_did_not_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "ssimulacra2", None)  # makes `import ssimulacra2` fail
    monkeypatch.setitem(sys.modules, "pyiqa", None)
    image = pattern(32, 32, 0)
    result = evaluate.evaluate_pairs([("x", image, image)], pyiqa_names=["lpips", "musiq"])
    assert result.columns == ["PSNR-Y", "SSIM-Y"]
    assert any("pip install ssimulacra2" in note for note in result.notes)
    assert any("lpips, musiq" in note and "pyiqa does not import" in note for note in result.notes)


def test_pyiqa_metrics_are_called_as_full_or_no_reference(monkeypatch):
    class FakeMetric:
        def __init__(self, name):
            self.metric_mode = "FR" if name == "lpips" else "NR"
            self.lower_better = name == "lpips"

        def __call__(self, *images):
            assert all(x.shape == (1, 3, 32, 32) and x.dtype == torch.float32 and x.max() <= 1 for x in images)
            return torch.tensor([float(len(images))])

    def create_metric(name, device, as_loss):
        if name == "dists":
            raise OSError("weights not found and no network")
        return FakeMetric(name)

    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    image = pattern(32, 32, 0)
    result = evaluate.evaluate_pairs([("x", image, image)], use_ssimulacra2=False,
                                     pyiqa_names=["lpips", "dists", "musiq"])
    assert result.rows[0]["LPIPS (lower better)"] == 2.0  # called with (sr, gt)
    assert result.rows[0]["MUSIQ"] == 1.0  # called with sr only
    assert any(note.startswith("dists skipped") and "no network" in note for note in result.notes)


def test_ssimulacra2_is_100_for_identical_images_and_lower_when_blurred():
    pytest.importorskip("ssimulacra2", reason="optional metric: pip install ssimulacra2")
    hr = smooth_image(64, 64)
    blurred = np.asarray(Image.fromarray(hr).resize((16, 16), Image.Resampling.BICUBIC)
                         .resize((64, 64), Image.Resampling.BICUBIC))
    assert metrics.ssimulacra2(hr, hr) == pytest.approx(100.0)
    assert metrics.ssimulacra2(blurred, hr) < 90
