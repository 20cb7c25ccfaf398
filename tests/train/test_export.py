"""What the trainer exports loads unchanged in flowsr (library and CLI) and holds the trained weights."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import flowsr
from flowsr.loading import load_model
from train.config import load_config
from train.models import build_model
from train.train import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_export(small_run, tmp_path_factory):
    return train(load_config(None, small_run(tmp_path_factory.mktemp("tiny"), **{"train.max_steps": 2})))


def test_small_model_export_holds_the_trained_weights_and_upscales(tiny_export):
    trained = load_file(str(tiny_export.parent / "checkpoints" / "step_00000002" / "model.safetensors"))
    exported = load_file(str(tiny_export))
    assert exported.keys() == {key.removeprefix("model.") for key in trained}
    assert all(torch.equal(exported[key.removeprefix("model.")], value) for key, value in trained.items())
    pipeline = flowsr.FlowSRPipeline.from_pretrained(checkpoint=tiny_export, device="cpu", dtype="fp32")
    out = pipeline.upscale(Image.new("RGB", (20, 16), (120, 60, 200)), scale=4.0)
    assert out.size == (80, 64)


def test_small_model_export_works_in_the_cli(tiny_export, tmp_path):
    Image.new("RGB", (12, 10), (10, 200, 30)).save(tmp_path / "in.png")
    upscale = subprocess.run([sys.executable, "-m", "flowsr", "upscale", str(tmp_path / "in.png"), "-o",
                              str(tmp_path / "out.png"), "--checkpoint", str(tiny_export), "--device", "cpu"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert upscale.returncode == 0, upscale.stderr
    assert Image.open(tmp_path / "out.png").size == (48, 40)
    check = subprocess.run([sys.executable, "-m", "flowsr", "check", str(tiny_export)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and "full model" in check.stdout, check.stdout + check.stderr


def test_half_precision_export_is_smaller_and_loads(small_run, tmp_path):
    export = train(load_config(None, small_run(tmp_path, **{"train.max_steps": 1, "export.dtype": "fp16"})))
    assert all(t.dtype == torch.float16 for t in load_file(str(export)).values())
    assert load_model(export, device="cpu", dtype="fp32").dtype == torch.float32


SD_RUN = {"model.type": "sd", "model.config": "{}", "model.unet_lora.rank": 4, "model.vae_lora.rank": 2,
          "data.crop": 64, "train.lr": 1e-2, "model.gradient_checkpointing": "true"}


@pytest.fixture(scope="module")
def sd_stage1(small_run, make_sd_components, tmp_path_factory):
    """SD stage 1 with UNet and VAE-encoder LoRA on the tiny SD components of tests/conftest.py."""
    output = tmp_path_factory.mktemp("sd1")
    return train(load_config(None, small_run(output, **SD_RUN, **{"train.max_steps": 2})),
                 base_components=make_sd_components())


def test_sd_lora_export_loads_in_flowsr_and_matches_the_trained_model(sd_stage1, make_sd_components,
                                                                      tiny_sd_folder):
    exported = load_file(str(sd_stage1))
    lora_b = [value for key, value in exported.items() if ".lora_B." in key]
    assert lora_b and any(value.abs().sum() > 0 for value in lora_b)           # the LoRA trained
    assert any(key.startswith("vae.encoder.") for key in exported)              # encoder-side VAE LoRA
    assert not any(key.startswith("vae.decoder.") for key in exported)          # the decoder stays the base one
    # flowsr's loader (LoRA merged into the weights) and the trainer's model (peft layers) agree.
    merged = load_model(sd_stage1, tiny_sd_folder, device="cpu", dtype="fp32")
    unmerged = build_model(dataclasses.replace(load_config().model, type="sd", init=str(sd_stage1)),
                           base_components=make_sd_components()).model.eval()
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latent = merged.encode(pixels)
        assert torch.allclose(latent, unmerged.encode(pixels), atol=1e-4)
        t = torch.tensor([0.7])
        assert torch.allclose(merged.velocity(latent, t), unmerged.velocity(latent, t), atol=1e-4)
    upscaled = flowsr.FlowSRPipeline(merged).upscale_tensor(torch.rand(1, 3, 16, 16), scale=4.0, tile_size=0)
    assert upscaled.shape == (1, 3, 64, 64) and torch.isfinite(upscaled).all()


def test_sd_stage2_from_the_stage1_lora_in_bf16(sd_stage1, small_run, tiny_sd_folder, tmp_path):
    """From the command line, with the base model read from a diffusers folder (a fresh process: accelerate
    fixes the precision once per process)."""
    overrides = small_run(tmp_path, **SD_RUN, **{
        "stage": 2, "model.init": str(sd_stage1), "model.base_model": str(tiny_sd_folder), "train.max_steps": 2,
        "train.mixed_precision": "bf16", "train.half_frozen": "true", "stage2.weights.iqa": 0})
    command = [sys.executable, "-m", "train.train", *(arg for o in overrides for arg in ("--set", o))]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    export = tmp_path / "flowsr.safetensors"
    model = load_model(export, tiny_sd_folder, device="cpu", dtype="fp32")
    assert model.latent_channels == 4
    # stage 2 trains the UNet LoRA only; the stage-1 VAE-encoder LoRA is carried over unchanged
    before, after = load_file(str(sd_stage1)), load_file(str(export))
    vae_keys = [key for key in before if key.startswith("vae.")]
    assert vae_keys and all(torch.equal(before[key], after[key]) for key in vae_keys)
    assert any(not torch.equal(before[key], after[key]) for key in before if key.startswith("unet."))
