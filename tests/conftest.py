"""Shared fixtures: tiny Stable Diffusion components of the real architectures, and FlowSR files built on them.

The components are UNet2DConditionModel / AutoencoderKL / CLIPTextModel with a small CLIPTokenizer, made
from the configs below (seconds on a CPU, no network). Their structure is SD 2.1's: 4 latent channels, a VAE
that downsamples 8x through 4 blocks, linear-projection transformers whose cross-attention reads the text
encoder's hidden size. ``write_flowsr_lora`` writes a synthetic checkpoint in the public format with
non-zero LoRA weights, built with peft directly so that it does not depend on the code it tests.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest
import torch

TEXT_WIDTH = 32  # the tiny text encoder's hidden size = the UNet's cross-attention width (1024 in SD 2.1)

TINY_UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=TEXT_WIDTH, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
)
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(8, 16, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=4, sample_size=64, scaling_factor=0.18215,
)
TINY_TEXT_CONFIG = dict(
    hidden_size=TEXT_WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, projection_dim=TEXT_WIDTH, hidden_act="gelu",
)

#: LoRA targets like the usual SD ones: attention, feed-forward, transformer projections, resnet convs.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2"]
#: Encoder-side VAE targets by full name, as S3Diff/OSEDiff list them.
VAE_TARGETS = ["encoder.conv_in", "encoder.down_blocks.0.resnets.0.conv1", "encoder.down_blocks.1.resnets.0.conv2",
               "encoder.mid_block.attentions.0.to_v"]
UNET_RANK, VAE_RANK = 4, 2  # scalings 8/4 = 2 and 8/2 = 4: a wrong lora_alpha shows


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes that CLIP's byte-level BPE works on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def write_tokenizer_files(folder: Path) -> Path:
    """vocab.json + merges.txt of a tiny CLIP BPE: every byte, alone or word-final, and a few merges."""
    symbols = _byte_symbols()
    merges = [("h", "i"), ("t", "h"), ("i", "g"), ("e", "n"), ("th", "e</w>")]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    folder = write_tokenizer_files(tmp_path_factory.mktemp("tokenizer"))
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def make_unet(seed: int = 0, **overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**TINY_UNET_CONFIG, **overrides}).eval()


def make_vae(seed: int = 1):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_VAE_CONFIG).eval()


def make_text_encoder(vocab_size: int, seed: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, **TINY_TEXT_CONFIG)).eval()


@pytest.fixture(scope="session")
def make_sd_components(tiny_tokenizer):
    """A factory of fresh ``(unet, vae, text_encoder, tokenizer)``, the same weights every call."""
    def make():
        return make_unet(), make_vae(), make_text_encoder(len(tiny_tokenizer)), tiny_tokenizer
    return make


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory, make_sd_components) -> Path:
    """A diffusers-layout SD folder (unet, vae, text_encoder, tokenizer; safetensors) of the tiny components."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    unet, vae, text_encoder, tokenizer = make_sd_components()
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def _random_lora(module, rank: int, targets, seed: int) -> dict:
    """Inject a peft LoRA (adapter ``default``) and give it random, non-zero A and B; returns its tensors."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=targets), module)
    generator = torch.Generator().manual_seed(seed)
    return {key: 0.1 * torch.randn(value.shape, generator=generator)
            for key, value in module.state_dict().items() if ".lora_A.default." in key or ".lora_B.default." in key}


def write_flowsr_lora(path: Path, *, unet_targets=UNET_TARGETS, unet_rank: int = UNET_RANK,
                      vae_targets: Optional[list] = VAE_TARGETS, vae_rank: int = VAE_RANK,
                      whole_weights: bool = True, unet_overrides: Optional[dict] = None, seed: int = 10) -> Path:
    """A checkpoint in the public format: LoRA for a tiny UNet (built with ``unet_overrides``), a trained
    ``conv_in`` stored whole, and optionally an encoder-side VAE LoRA stored with ``.default.`` keys.

    Tensor names in the file are opaque (``t0``, ``t1``...): only the metadata says where each belongs.
    """
    from safetensors.torch import save_file

    unet_state = _random_lora(make_unet(**(unet_overrides or {})), unet_rank, unet_targets, seed)
    if whole_weights:
        generator = torch.Generator().manual_seed(seed + 1)
        unet_state["conv_in.weight"] = 0.1 * torch.randn((TINY_UNET_CONFIG["block_out_channels"][0], 4, 3, 3),
                                                         generator=generator)
        unet_state["conv_in.bias"] = 0.1 * torch.randn((TINY_UNET_CONFIG["block_out_channels"][0],),
                                                       generator=generator)
    fields = {"unet_rank": unet_rank, "unet_lora_target_modules": unet_targets}
    groups = {"unet_state_dict": unet_state}
    if vae_targets is not None:
        groups["vae_state_dict"] = _random_lora(make_vae(), vae_rank, vae_targets, seed + 2)
        fields.update(vae_rank=vae_rank, vae_lora_target_modules=vae_targets)
    tensors, names = {}, {}
    for group, state in groups.items():
        names[group] = {}
        for key, value in sorted(state.items()):
            name = f"t{len(tensors)}"
            tensors[name] = value.contiguous()
            names[group][name] = key
    save_file(tensors, str(path), metadata={"flowsr_checkpoint_metadata":
                                            json.dumps({"fields": fields, "tensor_names": names})})
    return path


@pytest.fixture(scope="session")
def flowsr_lora_file(tmp_path_factory) -> Path:
    """A public-format flowsr.safetensors for the tiny components (UNet LoRA r=4, conv_in, VAE LoRA r=2)."""
    return write_flowsr_lora(tmp_path_factory.mktemp("lora") / "flowsr.safetensors")


@pytest.fixture(scope="session")
def tiny_sd_model(flowsr_lora_file, tiny_sd_folder):
    """The tiny SD FlowSR model, loaded like the real one (CPU, fp32). Shared: do not modify it."""
    from flowsr.loading import load_model

    return load_model(flowsr_lora_file, tiny_sd_folder, device="cpu", dtype="fp32")


@pytest.fixture
def terminal_signals():
    """SIGINT and SIGTERM as in a terminal (Python's handler, the default), whatever started pytest: a shell's
    background job or nohup starts it with SIGINT ignored, and an ignored signal stays ignored."""
    import signal

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL)}
    yield
    for number, handler in previous.items():
        signal.signal(number, handler)
