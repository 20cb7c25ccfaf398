"""Single-file SD 2.x checkpoints (original LDM layout) to diffusers parts, offline, with shipped configs.

A tiny SD2-shaped UNet and VAE are written out in the LDM layout by the plain inverse of the rules, and an
OpenCLIP-style text tower (built here the way OpenCLIP builds it: fused in_proj, ln_1/ln_2, c_fc/c_proj) is
stored as such; loading the file must give back the same UNet and VAE weights and outputs, the text tower's
penultimate-layer features, and agree with diffusers' own single-file converter.
"""
from __future__ import annotations

import json
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from flowsr.errors import CheckpointError
from flowsr.families import SD21_BASE
from flowsr.models.single_file import check_single_file, load_single_file_components
from tests.ldm_layout import ldm_unet_key, ldm_vae_key

LAYERS = 2
UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=LAYERS, block_out_channels=(16, 32, 32),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4, 4),
            cross_attention_dim=16, use_linear_projection=True, norm_num_groups=8)
VAE = dict(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
           up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4, norm_num_groups=8,
           sample_size=32, scaling_factor=0.18215)
TEXT = dict(width=16, heads=4, blocks=3, vocab=49408, context=77)  # the file holds one block more than used


# --------------------------------------------------------------------------------------------- OpenCLIP

class OpenClipBlock(nn.Module):
    """One residual block of OpenCLIP's text transformer, with its names."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)  # in_proj_weight/bias, out_proj
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(),
                                             c_proj=nn.Linear(4 * width, width)))

    def forward(self, x, mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class OpenClipText(nn.Module):
    """OpenCLIP's text tower as SD 2.x uses it: the penultimate block's output through ln_final."""

    def __init__(self, width, heads, blocks, vocab, context):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.1)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(OpenClipBlock(width, heads) for _ in range(blocks))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, width))

    def forward(self, ids):
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        mask = torch.full((ids.shape[1],) * 2, float("-inf")).triu(1)
        for block in self.transformer.resblocks[:-1]:
            x = block(x, mask)
        return self.ln_final(x)


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial values everywhere (norms and biases too), so a swapped tensor cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return module.eval()


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny reference parts, their configs in the diffusers layout, and a single LDM-layout file of them."""
    root = tmp_path_factory.mktemp("single_file")
    unet = _randomize(UNet2DConditionModel(**UNET), 0)
    with torch.no_grad():  # an epsilon model keeps this bias near zero; the 768-v hint reads its spread
        unet.up_blocks[-1].attentions[-1].transformer_blocks[0].norm1.bias.mul_(0.1)
    vae = _randomize(AutoencoderKL(**VAE), 1)
    clip = _randomize(OpenClipText(**TEXT), 2)
    config = root / "config"
    unet.save_config(config / "unet")
    vae.save_config(config / "vae")
    CLIPTextConfig(hidden_size=TEXT["width"], num_attention_heads=TEXT["heads"], intermediate_size=4 * TEXT["width"],
                   num_hidden_layers=TEXT["blocks"] - 1, vocab_size=TEXT["vocab"], hidden_act="gelu",
                   max_position_embeddings=TEXT["context"], projection_dim=TEXT["width"], bos_token_id=0,
                   eos_token_id=2, pad_token_id=1).save_pretrained(config / "text_encoder")
    shutil.copytree(SD21_BASE.config_dir / "tokenizer", config / "tokenizer")

    attention_up = [kind.startswith("CrossAttn") for kind in UNET["up_block_types"]]
    state = {"model.diffusion_model." + ldm_unet_key(k, LAYERS, attention_up): v
             for k, v in unet.state_dict().items()}
    for k, v in vae.state_dict().items():
        is_attention_linear = ".attentions." in k and k.endswith("weight") and v.dim() == 2
        name = "first_stage_model." + ldm_vae_key(k, len(VAE["block_out_channels"]))
        state[name] = v[:, :, None, None] if is_attention_linear else v
    state.update({"cond_stage_model.model." + k: v for k, v in clip.state_dict().items()})
    state["cond_stage_model.model.logit_scale"] = torch.tensor(4.6)
    state["alphas_cumprod"] = torch.linspace(1, 0, 10)  # LDM files carry the schedule too
    path = root / "sd21-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return dict(unet=unet, vae=vae, clip=clip, config=config, path=path, state=state, root=root)


@pytest.fixture(scope="module")
def loaded(tiny):
    return load_single_file_components(tiny["path"], config=tiny["config"])


def _write(path: Path, tensors: dict) -> Path:
    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, path)
    return path


def _sd2_like(**overrides):
    """The keys the family checks look at, with SD 2.x shapes; overrides replace or (with None) drop keys."""
    keys = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 1024),
            "first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3),
            "cond_stage_model.model.token_embedding.weight": (10, 1024)}
    keys.update(overrides)
    return {k: v for k, v in keys.items() if v is not None}


# --------------------------------------------------------------------------------------------- conversion

def test_unet_and_vae_come_back_exactly(tiny, loaded):
    unet, vae, _, _ = loaded
    for reference, model in ((tiny["unet"], unet), (tiny["vae"], vae)):
        expected = reference.state_dict()
        assert model.state_dict().keys() == expected.keys()
        assert all(torch.equal(tensor, expected[name]) for name, tensor in model.state_dict().items())
    generator = torch.Generator().manual_seed(3)
    latent = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 5, UNET["cross_attention_dim"], generator=generator)
    with torch.no_grad():
        assert torch.equal(unet(latent, 500, context).sample, tiny["unet"](latent, 500, context).sample)
        image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
        assert torch.equal(vae.encode(image).latent_dist.mean, tiny["vae"].encode(image).latent_dist.mean)
        assert torch.equal(vae.decode(latent).sample, tiny["vae"].decode(latent).sample)


def test_text_encoder_gives_the_penultimate_openclip_features(tiny, loaded):
    _, _, text_encoder, tokenizer = loaded
    assert text_encoder.config.num_hidden_layers == TEXT["blocks"] - 1
    ids = tokenizer(["a photo of a cat", "oil painting, blur"], padding="max_length", max_length=77,
                    truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = tiny["clip"](ids)
        features = text_encoder(ids).last_hidden_state
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    assert not features.isnan().any() and features.std() > 0.1


def test_models_are_ready_for_inference(loaded):
    for model in loaded[:3]:
        assert not model.training
        assert all(not t.is_meta for t in [*model.parameters(), *model.buffers()])
    text_encoder = loaded[2]
    position_ids = dict(text_encoder.named_buffers())[next(n for n, _ in text_encoder.named_buffers()
                                                           if n.endswith("position_ids"))]
    assert position_ids.tolist() == [list(range(77))]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_is_honoured(tiny, dtype):
    parts = load_single_file_components(tiny["path"], config=tiny["config"], dtype=dtype)
    for model, reference in zip(parts[:3], (tiny["unet"], tiny["vae"], None)):
        assert {p.dtype for p in model.parameters()} == {dtype}
        if reference is not None:
            assert torch.equal(next(model.parameters()), next(reference.parameters()).to(dtype))


def test_agrees_with_diffusers_single_file_converter(tiny, loaded):
    """diffusers' own LDM converter (another implementation) reads the same file to the same weights."""
    options = dict(config=str(tiny["config"]), local_files_only=True)
    unet = UNet2DConditionModel.from_single_file(str(tiny["path"]), subfolder="unet", **options)
    vae = AutoencoderKL.from_single_file(str(tiny["path"]), subfolder="vae", **options)
    for theirs, ours in ((unet, loaded[0]), (vae, loaded[1])):
        ours = ours.state_dict()
        assert theirs.state_dict().keys() == ours.keys()
        assert all(torch.equal(tensor, ours[name]) for name, tensor in theirs.state_dict().items())


# --------------------------------------------------------------------------------------------- wrong files

def test_v_prediction_model_loads_with_a_warning(tiny):
    state = dict(tiny["state"])
    key = f"model.diffusion_model.output_blocks.{3 * (LAYERS + 1) - 1}.1.transformer_blocks.0.norm1.bias"
    state[key] = torch.randn(state[key].shape, generator=torch.Generator().manual_seed(4))
    path = tiny["root"] / "v2-1_768-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.warns(UserWarning, match="768-v"):
        unet, *_ = load_single_file_components(path, config=tiny["config"])
    assert torch.equal(dict(unet.named_parameters())["up_blocks.2.attentions.2.transformer_blocks.0.norm1.bias"],
                       state[key])


def test_base_model_file_is_checked_quietly(tiny, recwarn):
    assert check_single_file(tiny["path"], cross_attention_dim=UNET["cross_attention_dim"]).path == tiny["path"]
    assert not [w for w in recwarn if "768-v" in str(w.message)]


@pytest.mark.parametrize("keys, message", [
    ({"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (10, 768),
      "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3)}, "SDXL"),
    (_sd2_like(**{"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (10, 768),
                  "cond_stage_model.model.token_embedding.weight": None,
                  "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 768)}),
     "SD 1.x"),
    (_sd2_like(**{"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 2048)}),
     "cross-attention width 2048 \\(SDXL\\)"),
    (_sd2_like(**{"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3)}), "inpainting model"),
    (_sd2_like(**{"model.diffusion_model.input_blocks.0.0.weight": (8, 5, 3, 3)}), "depth-to-image"),
    (_sd2_like(**{"model.diffusion_model.label_emb.0.0.weight": (8, 8)}), "unCLIP"),
    (_sd2_like(**{"first_stage_model.encoder.conv_in.weight": None}), "no VAE"),
    (_sd2_like(**{"cond_stage_model.model.token_embedding.weight": None}), "no OpenCLIP text encoder"),
    ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (8, 8)}, "another architecture"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8)}, "LoRA"),
    ({"encoder.down_blocks.0.resnets.0.conv1.weight": (8, 8)}, "diffusers model weights"),
    ({"embeddings.weight": (8, 8)}, "not a Stable Diffusion single-file checkpoint"),
], ids=["sdxl", "sd1", "context-2048", "inpainting", "depth", "unclip", "no-vae", "no-text", "sd3", "lora",
        "diffusers-part", "unknown"])
def test_wrong_base_is_refused_by_name(tmp_path, keys, message):
    path = _write(tmp_path / "model.safetensors", keys)
    with pytest.raises(CheckpointError, match=message) as error:
        load_single_file_components(path)
    assert str(error.value).endswith(SD21_BASE.help)  # and says what to use instead


def test_pickled_checkpoint_is_refused_unread(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    legacy = tmp_path / "v2-1_512-ema-pruned.ckpt"
    legacy.write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=2))
    zipped = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, zipped)
    for path in (legacy, zipped):
        with pytest.raises(CheckpointError, match="pickled PyTorch file.*safetensors"):
            load_single_file_components(path)
    assert not marker.exists()


def test_truncated_file_is_refused(tiny, tmp_path):
    data = tiny["path"].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_single_file_components(path, config=tiny["config"])


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_single_file_components(tmp_path / "nowhere.safetensors")


def test_missing_and_foreign_tensors_are_named(tiny, tmp_path):
    state = dict(tiny["state"])
    dropped = "model.diffusion_model.output_blocks.0.0.in_layers.0.weight"
    del state[dropped]
    state["model.diffusion_model.output_blocks.0.0.extra.weight"] = torch.zeros(2)
    path = tmp_path / "odd.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(CheckpointError, match=r"UNet .*missing up_blocks\.0\.resnets\.0\.norm1\.weight; "
                                              r"unexpected model\.diffusion_model\.output_blocks\.0\.0\.extra"):
        load_single_file_components(path, config=tiny["config"])


def test_other_widths_are_refused_before_loading(tiny, tmp_path):
    """A UNet of another width: a shape error naming the tensor, raised from the header alone."""
    config = tmp_path / "config"
    shutil.copytree(tiny["config"], config)
    unet_config = json.loads((config / "unet" / "config.json").read_text())
    unet_config["block_out_channels"] = [24, 32, 32]
    (config / "unet" / "config.json").write_text(json.dumps(unet_config))
    with pytest.raises(CheckpointError, match=r"UNet in sd21-tiny.safetensors .*input_blocks.0.0.weight has shape "
                                              r"\[16, 4, 3, 3\] where conv_in.weight needs \[24, 4, 3, 3\]"):
        load_single_file_components(tiny["path"], config=config)


# --------------------------------------------------------------------------------------------- shipped configs

def test_shipped_configs_build_sd21_base_at_full_size():
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD21_BASE.config_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD21_BASE.config_dir / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD21_BASE.config_dir / "text_encoder"))

    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(unet) == 865_910_724
    assert count(vae) == 83_653_863
    assert count(text_encoder) == 340_387_840
    assert unet.config.cross_attention_dim == 1024 and unet.config.use_linear_projection
    assert vae.config.scaling_factor == 0.18215
    assert text_encoder.config.num_hidden_layers == 23 and text_encoder.config.hidden_act == "gelu"


def test_shipped_tokenizer_gives_clip_token_ids():
    """Ids as OpenAI CLIP's own BPE tokenizer gives them (checked against it when the vocabulary was made)."""
    tokenizer = CLIPTokenizer.from_pretrained(str(SD21_BASE.config_dir / "tokenizer"), local_files_only=True)
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 0)
    assert tokenizer.model_max_length == 77
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407] + [0] * 70
    prompt = ("A high-resolution, 8K, ultra-realistic image with sharp focus, vibrant colors, "
              "and natural lighting.")
    assert tokenizer(prompt).input_ids == [
        49406, 320, 1400, 268, 9977, 267, 279, 330, 267, 8118, 268, 16157, 2867, 593, 8157, 4353, 267, 14270,
        5389, 267, 537, 3288, 5799, 269, 49407]
    negative = "oil painting, cartoon, blur, dirty, messy, low quality, deformation, low resolution, oversmooth"
    assert tokenizer(negative).input_ids == [
        49406, 2870, 3086, 267, 7651, 267, 27976, 267, 7615, 267, 15987, 267, 1042, 3027, 267, 561, 2510, 267, 1042,
        9977, 267, 1658, 8990, 49407]


def test_shipped_tokenizer_folder_is_complete():
    folder = SD21_BASE.config_dir / "tokenizer"
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 49408 and sorted(vocab.values()) == list(range(49408))
    assert merges[0].startswith("#version") and len(merges) == 1 + 48894
    assert (folder / "LICENSE").is_file()
