import math

import numpy as np
import pytest
import torch
from PIL import Image

from train.data import (BankDataset, PairDataset, SeededSampler, list_images, load_validation,
                        to_model_inputs)
from train.degradations import (MildConfig, RealESRGANConfig, anisotropic_kernel, bicubic_downscale, mild_degrade,
                                realesrgan_degrade, sinc_kernel)
from train.held_out import degrade_folder


def test_broken_and_small_files_are_skipped_and_counted(photos):
    dataset = PairDataset(photos, crop=32, degradation="bicubic")
    assert len(dataset.items) == 6
    assert len(dataset.skipped.unreadable) == 1 and "broken.png" in dataset.skipped.unreadable[0]
    assert len(dataset.skipped.too_small) == 1 and "tiny.png" in dataset.skipped.too_small[0]
    lazy = PairDataset(photos, crop=32, degradation="bicubic", cache=False)   # found at start-up too
    assert len(lazy.items) == 6 and len(lazy.skipped.unreadable) == 1


def test_no_usable_image_is_a_clear_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no usable training images"):
        PairDataset(tmp_path, crop=32)


@pytest.mark.parametrize("degradation", ["bicubic", "realesrgan", "mix"])
def test_samples_are_crops_and_pure_functions_of_their_seed(photos, degradation):
    dataset = PairDataset(photos, crop=32, degradation=degradation)
    first, again, other = dataset[(3, 11)], dataset[(3, 11)], dataset[(3, 12)]
    assert first["hr"].shape == (3, 32, 32) and first["lr"].shape == (3, 8, 8)
    assert first["hr"].dtype == first["lr"].dtype == torch.uint8
    assert torch.equal(first["hr"], again["hr"]) and torch.equal(first["lr"], again["lr"])
    assert not torch.equal(first["hr"], other["hr"]) or not torch.equal(first["lr"], other["lr"])


def test_list_file_and_paired_lr_folder(photos, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two of them\n{photos / 'photo0.png'}\n\nphoto1.png\n")
    (tmp_path / "photo1.png").write_bytes((photos / "photo1.png").read_bytes())
    assert [p.name for p in list_images(listing)] == ["photo0.png", "photo1.png"]

    lr_folder = tmp_path / "lr"
    lr_folder.mkdir()
    for path in sorted(photos.glob("photo*.png"))[:2]:
        hr = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)
        Image.fromarray(bicubic_downscale(hr, 4).permute(1, 2, 0).numpy()).save(lr_folder / (path.stem + ".png"))
    dataset = PairDataset(photos, crop=32, lr=lr_folder, flip=False)
    assert len(dataset.items) == 2 and len(dataset.skipped.unpaired) == 6   # the broken and tiny files too
    sample = dataset[(0, 5)]
    # The LR crop is the matching part of the paired image: downscaling the HR crop gives it back closely.
    assert (bicubic_downscale(sample["hr"], 4).float() - sample["lr"].float()).abs().mean() < 6


def test_sampler_gives_a_fresh_permutation_per_epoch_and_the_same_on_rerun():
    sampler = SeededSampler(10, seed=3)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(i for i, _ in epoch0) == list(range(10))
    assert [i for i, _ in epoch0] != [i for i, _ in epoch1]
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    assert len({seed for _, seed in epoch0 + epoch1}) == 20


def test_bank_holds_fixed_pairs_and_flips_them_consistently(photos):
    source = PairDataset(photos, crop=32, degradation="bicubic", flip=False)
    bank = BankDataset.build(source, size=10, seed=0)
    assert len(bank) == 10 and bank.hr.shape == (10, 3, 32, 32) and bank.lr.shape == (10, 3, 8, 8)
    flipped = BankDataset(bank.hr, bank.lr, flip=True)
    for seed in range(8):
        sample = flipped[(4, seed)]
        # whatever flip/rotation was drawn, LR and HR got the same one
        assert (bicubic_downscale(sample["hr"], 4).float() - sample["lr"].float()).abs().mean() < 1.0


def test_model_inputs_follow_the_pipeline_convention():
    batch = {"hr": torch.full((2, 3, 16, 16), 255, dtype=torch.uint8), "lr": torch.zeros((2, 3, 4, 4), dtype=torch.uint8)}
    hr, lr = to_model_inputs(batch)
    assert hr.shape == lr.shape == (2, 3, 16, 16)
    assert torch.all(hr == 1) and torch.all(lr == -1)


def test_validation_crops_are_centred_and_scale_aligned(validation_photos):
    images = load_validation(validation_photos, None, scale=4, crop=40, max_images=4)
    assert len(images) == 1
    assert images[0].hr.shape == (3, 40, 40) and images[0].lr.shape == (3, 10, 10)


def test_kernels_are_normalised():
    assert sinc_kernel(13, math.pi / 2).sum().item() == pytest.approx(1.0, abs=1e-5)
    for shape in ("gaussian", "generalized", "plateau"):
        kernel = anisotropic_kernel(21, 2.0, 0.7, 0.4, shape, beta=1.5)
        assert kernel.sum().item() == pytest.approx(1.0, abs=1e-5) and kernel.shape == (21, 21)
        assert kernel.argmax().item() == 21 * 10 + 10   # peaked at the centre


def test_realesrgan_degradation_is_seeded_and_degrades(make_photo):
    hr = torch.from_numpy(make_photo(64, 64, 1)).permute(2, 0, 1).float() / 255
    a = realesrgan_degrade(hr, 4, torch.Generator().manual_seed(0))
    b = realesrgan_degrade(hr, 4, torch.Generator().manual_seed(0))
    c = realesrgan_degrade(hr, 4, torch.Generator().manual_seed(1))
    assert a.shape == (3, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    clean = bicubic_downscale((hr * 255).round().to(torch.uint8), 4).float() / 255
    assert (a - clean).abs().mean() > 0.01   # blur/noise/JPEG moved it away from the clean downscale


def test_degradation_overrides_are_checked():
    config = RealESRGANConfig.from_dict({"second": {"blur_prob": 0.0, "blur": {"sigma": [0.1, 0.5]}}})
    assert config.second.blur_prob == 0.0 and list(config.second.blur.sigma) == [0.1, 0.5]
    assert config.first.blur.sigma == RealESRGANConfig().first.blur.sigma
    with pytest.raises(ValueError, match="unknown degradation option data.realesrgan.second.blurr"):
        RealESRGANConfig.from_dict({"second": {"blurr": 1}})


def test_degrade_folder_writes_a_reproducible_lr_set(photos, tmp_path):
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    for name in ("photo0.png", "photo1.png"):
        (hr_dir / name).write_bytes((photos / name).read_bytes())
    first = degrade_folder(str(hr_dir), str(tmp_path / "a"), scale=4, seed=0)
    degrade_folder(str(hr_dir), str(tmp_path / "b"), scale=4, seed=0)
    assert [Image.open(p).size for p in first] == [(20, 18), (20, 20)]
    for name in ("photo0.png", "photo1.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_mild_degradation_is_seeded_noisy_and_close_to_the_clean_downscale():
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    grey = 128 + 60 * torch.sin(x / 9) + 40 * torch.cos(y / 7)   # grey: JPEG's chroma subsampling costs nothing
    hr = grey.expand(3, -1, -1).round().to(torch.uint8).contiguous()
    a, b = (mild_degrade(hr, 4, torch.Generator().manual_seed(0)) for _ in range(2))
    c = mild_degrade(hr, 4, torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == (3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    clean = bicubic_downscale(hr, 4).float()
    difference = (a.float() - clean).abs().mean()
    assert 2 < difference < 12   # noise sigma 5 and JPEG 75: degraded, but the same image
    quiet = mild_degrade(hr, 4, torch.Generator().manual_seed(0), MildConfig(blur_sigma=0, noise_sigma=0, jpeg_quality=100))
    assert (quiet.float() - clean).abs().mean() < difference / 2


def test_mix_draws_mild_pairs_in_its_share_and_flat_pairs_stay_flat(photos):
    mixed = PairDataset(photos, crop=32, degradation="mix", mix_prob=0.0, mix_mild_prob=0.5, flip=False)
    clean = PairDataset(photos, crop=32, degradation="bicubic", flip=False)
    keys = [(i % len(mixed), 1000 + i) for i in range(40)]
    assert all(torch.equal(mixed[k]["hr"], clean[k]["hr"]) for k in keys)   # the same crops...
    differs = sum(not torch.equal(mixed[k]["lr"], clean[k]["lr"]) for k in keys)
    assert 10 <= differs <= 30   # ...and a mild LR for about half of them
    flat = PairDataset(photos, crop=32, degradation="bicubic", flat_prob=1.0)
    sample = flat[(0, 7)]
    for image in (sample["hr"], sample["lr"]):
        assert torch.equal(image.amin((1, 2)), image.amax((1, 2)))   # one colour each
    assert torch.equal(sample["lr"][:, 0, 0], sample["hr"][:, 0, 0])
    with pytest.raises(ValueError, match="at most 1"):
        PairDataset(photos, crop=32, degradation="mix", mix_prob=0.6, mix_mild_prob=0.6)
