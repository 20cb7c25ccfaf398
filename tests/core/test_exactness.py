"""End to end on a tiny SD model: the pipeline against docs/FORMAT.md's conventions written out with plain
diffusers / transformers / peft calls, and tiled against untiled."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from flowsr import FlowSRPipeline
from flowsr.models.sd import POSITIVE_PROMPT


def load_reference_components(folder, lora_file):
    """Base components from the diffusers folder with the public LoRA applied as docs/FORMAT.md describes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    with safe_open(str(lora_file), framework="pt") as f:
        meta = json.loads(f.metadata()["flowsr_checkpoint_metadata"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    fields, names = meta["fields"], meta["tensor_names"]
    inject_adapter_in_model(LoraConfig(r=fields["unet_rank"], init_lora_weights="gaussian",
                                       target_modules=fields["unet_lora_target_modules"]), unet)
    inject_adapter_in_model(LoraConfig(r=fields["vae_rank"], init_lora_weights="gaussian",
                                       target_modules=fields["vae_lora_target_modules"]), vae, adapter_name="vae_skip")
    for module, group, rename in ((unet, "unet_state_dict", lambda k: k),
                                  (vae, "vae_state_dict", lambda k: k.replace(".default", ".vae_skip"))):
        state = {rename(key): tensors[name] for name, key in names[group].items()}
        assert not module.load_state_dict(state, strict=False).unexpected_keys
    return unet, vae, text_encoder, tokenizer


@torch.no_grad()
def reference_upscale(components, image: Image.Image, scale: int) -> np.ndarray:
    unet, vae, text_encoder, tokenizer = components
    tokens = tokenizer(POSITIVE_PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    context = text_encoder(tokens.input_ids).last_hidden_state
    lr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    height, width = lr.shape[-2] * scale, lr.shape[-1] * scale
    x = F.interpolate(lr, size=(height, width), mode="bilinear", align_corners=False) * 2 - 1
    x = F.pad(x, (0, -width % 64, 0, -height % 64), mode="reflect")
    z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    v = unet(z, torch.tensor([1000.0]), encoder_hidden_states=context).sample
    out = vae.decode((z - v) / vae.config.scaling_factor).sample.clamp(-1, 1)[..., :height, :width]
    return ((out[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()


def photo_like(height: int, width: int, seed: int = 0) -> Image.Image:
    """Smooth colour gradients with some texture: enough structure for the networks to react to."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(3 * x + 1), np.cos(4 * y), np.sin(5 * x * y + 2)], -1) * 0.35 + 0.5
    pixels = np.clip(base + 0.05 * rng.standard_normal((height, width, 3)), 0, 1)
    return Image.fromarray((pixels * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def sd_pipeline(flowsr_lora_file, tiny_sd_folder):
    return FlowSRPipeline.from_pretrained(flowsr_lora_file, tiny_sd_folder, device="cpu", dtype="fp32")


def test_one_step_equals_the_reference_conventions_within_one_grey_level(sd_pipeline, flowsr_lora_file,
                                                                        tiny_sd_folder):
    image = photo_like(13, 17)  # odd sizes: padding and cropping matter
    expected = reference_upscale(load_reference_components(tiny_sd_folder, flowsr_lora_file), image, 4)
    ours = np.asarray(sd_pipeline.upscale(image, scale=4, tile_size=0, color_fix="none"))
    assert ours.shape == expected.shape == (52, 68, 3)
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1


def test_seed_samples_the_latent_and_is_reproducible(sd_pipeline):
    image = photo_like(8, 8)
    mean = np.asarray(sd_pipeline.upscale(image, tile_size=0, color_fix="none"))
    first = np.asarray(sd_pipeline.upscale(image, tile_size=0, color_fix="none", seed=3))
    again = np.asarray(sd_pipeline.upscale(image, tile_size=0, color_fix="none", seed=3))
    assert np.array_equal(first, again) and not np.array_equal(first, mean)


def test_tiled_sd_pipeline_puts_every_tile_in_place(flowsr_lora_file, tiny_sd_folder):
    """Tiles of the SD model's geometry (8 pixels per latent pixel, padding to 64) land where they belong.

    Random-weight networks mix information globally (attention, GroupNorm), so tiles cannot match the whole
    with them; here the autoencoder and the velocity are local maps (an 8x8-patch encoder and decoder, a 3x3
    convolution), for which tiling is exact: a tile one latent pixel out of place changes the output. The
    seam criterion of a trained model is checked on the built-in one (tests/core/test_builtin.py)."""
    pipe = FlowSRPipeline.from_pretrained(flowsr_lora_file, tiny_sd_folder, device="cpu", dtype="fp32")
    generator = torch.Generator().manual_seed(0)
    encoder, decoder = (torch.randn(4, 3, 8, 8, generator=generator) * 0.05 for _ in range(2))
    kernel = torch.randn(4, 4, 3, 3, generator=generator) * 0.1
    pipe.model.encode = lambda pixels, generator=None: F.conv2d(pixels, encoder, stride=8)
    pipe.model.decode = lambda latent: F.conv_transpose2d(latent, decoder, stride=8)
    pipe.model.velocity = lambda x_t, t: F.conv2d(x_t, kernel, padding=1)
    image = photo_like(48, 64, seed=1)  # latent 24 x 32: tiles of 16 with overlap 8 split it both ways
    whole = np.asarray(pipe.upscale(image, tile_size=0, color_fix="none")).astype(int)
    tiled = np.asarray(pipe.upscale(image, tile_size=16, tile_overlap=8, tile_batch=2, color_fix="none"))
    assert whole.std() > 5 and np.abs(whole - tiled).max() <= 1
