"""The losses that need weights (LPIPS, CLIP-IQA) load from local files, and say so when they are off."""
import logging

import pytest
import torch
from safetensors.torch import save_file

from train.losses import ImageDistance, LatentDiscriminator, discriminator_loss, generator_loss
from train.config import IQAModelConfig, IQAConfig, LPIPSConfig
from train.perceptual import LPIPS, load_clip_iqa, load_lpips


@pytest.fixture(scope="session")
def lpips_files(tmp_path_factory):
    """Random weights in the layouts of torchvision's vgg16 file and LPIPS' vgg.pth (keys as those files have)."""
    folder = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    reference = LPIPS()
    vgg = {f"features.{k[len('features.'):]}": v for k, v in reference.state_dict().items() if k.startswith("features.")}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)   # torchvision's file holds the classifier too: ignored
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    save_file(vgg, str(folder / "vgg16.safetensors"))
    torch.save(lins, folder / "vgg.pth")
    return folder / "vgg16.safetensors", folder / "vgg.pth"


def test_lpips_from_local_files(lpips_files):
    lpips = load_lpips(LPIPSConfig(vgg_weights=str(lpips_files[0]), linear_weights=str(lpips_files[1])))
    torch.manual_seed(1)
    a = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    b = torch.rand(2, 3, 32, 32) * 2 - 1
    same, different = lpips(a, a), lpips(a, b)
    assert same.shape == different.shape == (2,)
    assert torch.allclose(same, torch.zeros(2), atol=1e-6) and (different > 0).all()
    different.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips.parameters())


def test_lpips_off_is_logged(caplog):
    with caplog.at_level(logging.WARNING):
        assert load_lpips(LPIPSConfig(package=True)) is None
    assert "LPIPS loss OFF" in caplog.text


def test_image_distance_combines_l2_and_lpips():
    a, b = torch.zeros(3, 3, 8, 8), torch.ones(3, 3, 8, 8)
    assert torch.allclose(ImageDistance(2.0, 1.0, None)(a, b), torch.full((3,), 2.0))
    fake_lpips = lambda x, y: torch.full((len(x),), 0.5)   # noqa: E731
    assert torch.allclose(ImageDistance(1.0, 4.0, fake_lpips)(a, b), torch.full((3,), 3.0))


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory, tiny_tokenizer):
    """A tiny random CLIP model and its tokenizer saved as a local transformers folder."""
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    vocab = len(tiny_tokenizer)
    special = dict(bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, **special),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_clip_iqa_pulls_images_towards_the_positive_caption(clip_folder):
    loss = load_clip_iqa(IQAModelConfig(str(clip_folder)), IQAConfig("hi", "the", 100.0))
    images = (torch.rand(2, 3, 40, 40) * 2 - 1).requires_grad_(True)
    values = loss(images)
    assert values.shape == (2,) and (values > 0).all()
    values.sum().backward()
    assert images.grad.abs().sum() > 0
    with torch.no_grad():   # a small step against the gradient lowers the loss
        stepped = images - 0.01 * images.grad / images.grad.abs().max()
    assert loss(stepped).sum() < values.sum()


def test_clip_iqa_off_is_logged(caplog):
    with caplog.at_level(logging.WARNING):
        assert load_clip_iqa(IQAModelConfig(None), IQAConfig()) is None
    assert "L_iqa) OFF" in caplog.text


@pytest.mark.parametrize("kind", ["hinge", "non_saturating"])
def test_adversarial_losses_prefer_the_right_side(kind):
    confident = discriminator_loss(torch.full((4,), 3.0), torch.full((4,), -3.0), kind)
    fooled = discriminator_loss(torch.full((4,), -3.0), torch.full((4,), 3.0), kind)
    assert confident < fooled
    assert generator_loss(torch.full((4,), 3.0), kind) < generator_loss(torch.full((4,), -3.0), kind)
    with pytest.raises(ValueError, match="adv.loss"):
        generator_loss(torch.zeros(1), "wasserstein")


def test_latent_discriminator_scores_patches():
    critic = LatentDiscriminator(in_channels=48, channels=8, layers=2)
    logits = critic(torch.randn(3, 48, 16, 16))
    assert logits.shape == (3, 1, 4, 4)


def test_stage2_with_lpips_and_clip_on(small_run, lpips_files, clip_folder, tmp_path):
    from train.config import load_config
    from train.tracking import read_scalars
    from train.train import train

    stage1 = train(load_config(None, small_run(tmp_path / "s1", **{"train.max_steps": 1})))
    output = train(load_config(None, small_run(tmp_path / "s2", **{
        "stage": 2, "model.init": stage1, "train.max_steps": 1, "stage2.weights.iqa": 0.1,
        "stage2.distance.lpips": 1.0, "clip.path": str(clip_folder), "lpips.vgg_weights": str(lpips_files[0]),
        "lpips.linear_weights": str(lpips_files[1])})))
    logged = {name for _, name, _ in read_scalars(output.parent / "scalars.csv")}
    assert {"train/cd", "train/hr", "train/flow", "train/adv", "train/iqa", "train/disc"} <= logged
