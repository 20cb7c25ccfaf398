"""A small SD 2.1-shaped single file that ComfyUI's Load Checkpoint takes for SD 2.x, a FlowSR LoRA for it, and
the pack's own result on them: what the ComfyUI driver compares the native nodes with.

ComfyUI recognises SD 2.x by shape, not by name: a UNet with 320 model channels attending to 1024-wide text
features through linear projections, and it builds its VAE and OpenCLIP text tower at their fixed SD sizes. So
the UNet here is small (one resolution level, one layer per block) while the VAE and the 24-block text tower are
full size (random, stored as fp16 to halve the file: about 0.9 GB). ``config`` holds the diffusers configs the
pack's single-file loader reads it with (the shipped SD 2.1-base ones, the UNet's made small).

Run with ComfyUI's Python (torch, diffusers, peft, transformers come with the pack's requirements).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # ComfyUI has a "tests" package of its own
from flowsr.families import SD21_BASE  # noqa: E402
from flowsr.lora import lora_state_dict, save_lora  # noqa: E402
from ldm_layout import ldm_unet_key, ldm_vae_key  # noqa: E402

UNET_CHANGES = dict(block_out_channels=[320], down_block_types=["CrossAttnDownBlock2D"],
                    up_block_types=["CrossAttnUpBlock2D"], attention_head_dim=[5], layers_per_block=1)
#: The usual SD LoRA targets, and encoder-side VAE targets as S3Diff/OSEDiff name them (one a linear layer in
#: diffusers that is a 1x1 convolution in ComfyUI's VAE).
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2"]
VAE_TARGETS = ["encoder.conv_in", "encoder.down_blocks.0.resnets.0.conv1", "encoder.down_blocks.2.resnets.1.conv2",
               "encoder.mid_block.attentions.0.to_v"]
UNET_RANK, VAE_RANK = 4, 2
TEXT_LAYERS, TEXT_WIDTH, TEXT_MLP, VOCABULARY, TOKENS = 24, 1024, 4096, 49408, 77


def write_config(folder: Path) -> Path:
    """The shipped SD 2.1-base configs with the UNet made small."""
    for part in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(SD21_BASE.config_dir / part, folder / part, dirs_exist_ok=True)
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "unet" / "config.json").write_text(json.dumps({**SD21_BASE.unet_config, **UNET_CHANGES}))
    return folder


def build_networks(config: Path, seed: int = 0):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet")).eval()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae")).eval()
    return unet, vae


def text_tower(seed: int = 2) -> dict:
    """Random OpenCLIP text-tower tensors in the checkpoint layout (24 blocks; SD 2.x reads the 23rd's output)."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape, std=0.02):
        return (std * torch.randn(*shape, generator=generator)).half()

    width, prefix = TEXT_WIDTH, "cond_stage_model.model."
    tensors = {"token_embedding.weight": normal(VOCABULARY, width), "positional_embedding": normal(TOKENS, width, std=0.01),
               "ln_final.weight": torch.ones(width).half(), "ln_final.bias": torch.zeros(width).half(),
               "text_projection": normal(width, width), "logit_scale": torch.tensor(4.6052).half()}
    for layer in range(TEXT_LAYERS):
        block = f"transformer.resblocks.{layer}."
        tensors.update({block + "ln_1.weight": torch.ones(width).half(), block + "ln_1.bias": normal(width),
                        block + "attn.in_proj_weight": normal(3 * width, width), block + "attn.in_proj_bias": normal(3 * width),
                        block + "attn.out_proj.weight": normal(width, width), block + "attn.out_proj.bias": normal(width),
                        block + "ln_2.weight": torch.ones(width).half(), block + "ln_2.bias": normal(width),
                        block + "mlp.c_fc.weight": normal(TEXT_MLP, width), block + "mlp.c_fc.bias": normal(TEXT_MLP),
                        block + "mlp.c_proj.weight": normal(width, TEXT_MLP), block + "mlp.c_proj.bias": normal(width)})
    return {prefix + name: tensor for name, tensor in tensors.items()}


def write_checkpoint(path: Path, config: Path) -> None:
    """The networks in the original LDM layout, fp16, as one safetensors file."""
    from safetensors.torch import save_file

    unet, vae = build_networks(config)
    layers = unet.config.layers_per_block
    attention_up = ["CrossAttn" in kind for kind in unet.config.up_block_types]
    levels = len(vae.config.block_out_channels)
    tensors = {f"model.diffusion_model.{ldm_unet_key(name, layers, attention_up)}": value.half()
               for name, value in unet.state_dict().items()}
    for name, value in vae.state_dict().items():
        key = ldm_vae_key(name, levels)
        if ".mid.attn_1." in key and key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # ComfyUI's VAE attention projections are 1x1 convolutions
        tensors[f"first_stage_model.{key}"] = value.half()
    tensors.update(text_tower())
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))


def write_lora(path: Path, config: Path, seed: int = 10) -> None:
    """A public-format FlowSR file for these networks: non-zero LoRA (lora_alpha 8 shows), a trained conv_in."""
    from peft import LoraConfig, inject_adapter_in_model

    unet, vae = build_networks(config)
    generator = torch.Generator().manual_seed(seed)
    for module, rank, targets in ((unet, UNET_RANK, UNET_TARGETS), (vae, VAE_RANK, VAE_TARGETS)):
        inject_adapter_in_model(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=targets), module)
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                if ".lora_B." in name:
                    parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
    with torch.no_grad():
        unet.conv_in.weight.add_(0.02 * torch.randn(unet.conv_in.weight.shape, generator=generator))
    save_lora(path, lora_state_dict(unet, "default", whole_weights=("conv_in.",)), UNET_RANK, UNET_TARGETS,
              lora_state_dict(vae, "default"), VAE_RANK, VAE_TARGETS)


def write_all(folder: Path) -> dict[str, Path]:
    """config/, the checkpoint and the LoRA in ``folder`` (built once: kept if already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"config": folder / "config", "checkpoint": folder / "flowsr_test_tiny_sd21.safetensors",
             "lora": folder / "flowsr_test_tiny_lora.safetensors"}
    write_config(paths["config"])
    if not paths["checkpoint"].is_file():
        write_checkpoint(paths["checkpoint"], paths["config"])
    if not paths["lora"].is_file():
        write_lora(paths["lora"], paths["config"])
    return paths


def pack_upscale(paths: dict[str, Path], pixels: torch.Tensor, scale: float, **options) -> torch.Tensor:
    """The pack's own path on the same files (its single-file loader, peft LoRA merged in fp32), (B, 3, H, W)."""
    from flowsr.lora import apply_lora, read_lora
    from flowsr.models.sd import SDFlowSRModel
    from flowsr.models.single_file import load_single_file_components
    from flowsr.pipeline import FlowSRPipeline

    unet, vae, text_encoder, tokenizer = load_single_file_components(paths["checkpoint"], config=paths["config"])
    apply_lora(read_lora(paths["lora"]), unet, vae)
    model = SDFlowSRModel.from_components(unet, vae, text_encoder, tokenizer)
    del text_encoder
    return FlowSRPipeline(model).upscale_tensor(pixels, scale, **options)
