"""SDFlowSRModel: SD's latent space, the UNet as velocity at timestep 1000 t, the cached prompt embedding."""
from __future__ import annotations

import json

import pytest
import torch
from tests.conftest import TEXT_WIDTH, TINY_UNET_CONFIG, TINY_VAE_CONFIG

from flowsr import flow
from flowsr.families import SD21_BASE
from flowsr.models.sd import POSITIVE_PROMPT, SDFlowSRModel, encode_prompt


@pytest.fixture(scope="module")
def model(make_sd_components):
    return SDFlowSRModel.from_components(*make_sd_components()).eval()


def pixels(batch=1, size=32, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_prompt_embedding_is_clips_last_hidden_state_of_the_padded_prompt(model, make_sd_components):
    _, _, text_encoder, tokenizer = make_sd_components()
    ids = tokenizer(POSITIVE_PROMPT, padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and ids[0, -1] == tokenizer.pad_token_id  # padded, not truncated
    with torch.no_grad():
        expected = text_encoder(ids)[0]
    assert model.prompt_embedding.shape == (1, 77, TEXT_WIDTH)
    assert torch.equal(model.prompt_embedding, expected)
    assert POSITIVE_PROMPT == ("A high-resolution, 8K, ultra-realistic image with sharp focus, vibrant colors, "
                               "and natural lighting.")


def test_prompt_length_comes_from_the_encoder_not_the_tokenizer(make_sd_components):
    _, _, text_encoder, tokenizer = make_sd_components()
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)  # no config: model_max_length unset
    assert tokenizer.model_max_length > 77
    assert encode_prompt(text_encoder, tokenizer).shape == (1, 77, TEXT_WIDTH)


def test_text_encoder_is_not_kept(model):
    unet_and_vae = sum(p.numel() for p in [*model.unet.parameters(), *model.vae.parameters()])
    assert sum(p.numel() for p in model.parameters()) == unet_and_vae
    assert "prompt_embedding" not in model.state_dict()  # derived from the base model, never saved
    assert model.denoiser is model.unet and model.autoencoder is model.vae


def test_encode_is_the_scaled_mean_or_a_seeded_sample(model):
    x = pixels()
    with torch.no_grad():
        dist = model.vae.encode(x).latent_dist
        mean = model.encode(x)
        assert mean.shape == (1, 4, 4, 4)
        assert torch.equal(mean, dist.mean * 0.18215)
        first = model.encode(x, generator=torch.Generator().manual_seed(3))
        again = model.encode(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and not torch.allclose(first, mean)
    assert torch.allclose(first, dist.sample(torch.Generator().manual_seed(3)) * 0.18215)


def test_decode_divides_by_the_scaling_factor(model):
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(model.decode(z), model.vae.decode(z / 0.18215).sample)
        assert model.decode(z).shape == (2, 3, 32, 32)


def test_velocity_is_the_unet_at_timestep_1000_t_with_the_prompt(model):
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([1.0, 0.25])
    seen = []
    hook = model.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append((args, kwargs)),
                                                with_kwargs=True)
    try:
        with torch.no_grad():
            v = model.velocity(x, t)
    finally:
        hook.remove()
    (args, kwargs), = seen
    assert torch.equal(args[1], torch.tensor([1000.0, 250.0])) and torch.equal(args[1], flow.timestep(t))
    assert kwargs["encoder_hidden_states"].shape == (2, 77, TEXT_WIDTH)
    with torch.no_grad():
        expected = model.unet(x, torch.tensor([1000.0, 250.0]),
                              encoder_hidden_states=model.prompt_embedding.expand(2, -1, -1)).sample
    assert torch.equal(v, expected)


def test_one_euler_step_gives_lr_minus_velocity(model):
    """With the flow math: x_hr = x_lr - v(x_lr, 1) (docs/METHOD.md)."""
    x_lr = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        x_hr = flow.sample(model.velocity, x_lr, flow.uniform_schedule(1))
        assert torch.allclose(x_hr, x_lr - model.velocity(x_lr, torch.ones(1)), atol=1e-6)


def test_half_precision_and_fp32_autoencoder(make_sd_components):
    model = SDFlowSRModel.from_components(*make_sd_components()).to(torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.prompt_embedding.dtype == torch.bfloat16
    with torch.no_grad():
        assert model.velocity(torch.randn(1, 4, 8, 8), torch.ones(1)).dtype == torch.bfloat16
        with model.autoencoder_in_fp32():
            assert model.encode(pixels()).dtype == torch.float32  # bf16 UNet, fp32 VAE
            assert model.dtype == torch.bfloat16
        assert model.encode(pixels()).dtype == torch.bfloat16


def test_from_configs_builds_random_weights_from_a_config_folder(tmp_path):
    for name, config in [("unet", TINY_UNET_CONFIG), ("vae", TINY_VAE_CONFIG)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    model = SDFlowSRModel.from_configs(tmp_path)
    assert model.prompt_embedding.shape == (1, 77, TEXT_WIDTH)
    with torch.no_grad():
        assert model.decode(model.encode(pixels())).shape == (1, 3, 32, 32)
    assert torch.equal(SDFlowSRModel.from_configs(tmp_path).prompt_embedding, model.prompt_embedding)


def test_shipped_configs_are_the_full_sd21_base_architecture():
    """On the meta device: the real sizes without allocating 4 GB."""
    with torch.device("meta"):
        model = SDFlowSRModel.from_configs(SD21_BASE.config_dir)
    assert sum(p.numel() for p in model.unet.parameters()) == 865_910_724
    assert sum(p.numel() for p in model.vae.parameters()) == 83_653_863
    assert model.prompt_embedding.shape == (1, 77, 1024) and model.scaling_factor == 0.18215
