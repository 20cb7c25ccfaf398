"""An SD 2.x checkpoint kept as one ``.safetensors`` file, as ComfyUI and A1111 keep them, to diffusers parts.

Such a file (e.g. ``v2-1_512-ema-pruned.safetensors``) is in the original LDM layout: the UNet under
``model.diffusion_model.``, the VAE under ``first_stage_model.`` and the OpenCLIP ViT-H text tower under
``cond_stage_model.model.``. The rules below rename its tensors to the layout of diffusers'
``UNet2DConditionModel`` / ``AutoencoderKL`` and transformers' ``CLIPTextModel``, which are built from the
SD 2.1-base configs shipped in ``configs/sd21-base`` (tokenizer included), so nothing comes from the hub.

We keep this mapping ourselves rather than call diffusers' ``from_single_file``: measured on a full-size
random SD 2.1 file (5.2 GB, bench/bench_single_file.py, 2 shared CPU cores, file in the page cache), the
memory is the same, and ours is faster and builds the text encoder alike on every supported version:

    load seconds, then peak RSS with every weight read   newest (diffusers 0.42.1)   A1111 pins (0.31.0)
    ours: UNet + VAE + text encoder                      35.0 s, 5.52 GiB            35.4 s, 5.43 GiB
    diffusers' StableDiffusionPipeline.from_single_file  57.9 s, 5.52 GiB            48.3 s, 5.44 GiB
    diffusers' UNet + VAE from_single_file (no text)     24.7 s, 4.00 GiB            31.1 s, 3.91 GiB

(peak anonymous memory 0.6 GiB or less in every case: the weights stay memory-mapped from the file). Here
the file is checked first (from its header: wrong base models are refused before any weight is read), the
models are created on the ``meta`` device (no memory, no random init), and each tensor, read and cast,
becomes the parameter itself, so the weights are never held twice.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Dict, Iterable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError
from ..families import CROSS_ATTENTION_WIDTHS, SD21_BASE
from ..weights_file import SD_SINGLE_FILE, WeightsFile, read_weights_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."

#: What a UNet with other input channels is; SD 2.x text-to-image UNets take the 4 latent channels.
_IN_CHANNEL_VARIANTS = {5: "a depth-to-image model (5 input channels)",
                        7: "the x4 upscaler model (7 input channels)",
                        9: "an inpainting model (9 input channels)"}

PathLike = Union[str, os.PathLike]
Shapes = Dict[str, Tuple[int, ...]]


class Source(NamedTuple):
    """Where one diffusers tensor comes from: a checkpoint key, and which third of it for a fused q/k/v."""

    key: str
    third: Optional[int] = None


def load_single_file_components(path: PathLike, *, dtype: Optional[torch.dtype] = None,
                                config: Optional[PathLike] = None):
    """``(unet, vae, text_encoder, tokenizer)`` from a single-file SD 2.x checkpoint, on the CPU, in eval mode.

    ``dtype`` defaults to float32 (as diffusers' ``from_pretrained`` does), whatever the file stores.
    ``config`` is a folder with ``unet/``, ``vae/``, ``text_encoder/`` and ``tokenizer/`` in the diffusers layout;
    it defaults to the shipped SD 2.1-base one (tests pass tiny ones). Any mismatch between the file and the
    configs raises :class:`CheckpointError` before a tensor is read.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    config = Path(config) if config is not None else SD21_BASE.config_dir
    unet_config = UNet2DConditionModel.load_config(config / "unet")
    file = check_single_file(path, in_channels=unet_config["in_channels"],
                             cross_attention_dim=unet_config["cross_attention_dim"])
    vae_config = AutoencoderKL.load_config(config / "vae")
    text_config = CLIPTextConfig.from_pretrained(config / "text_encoder")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = CLIPTextModel(text_config)

    shapes = {name: tuple(entry["shape"]) for name, entry in file.tensors.items()}
    # transformers 5 dropped the ``text_model`` wrapper of CLIPTextModel; its keys start one level higher.
    text_root = "text_model." if hasattr(text_encoder, "text_model") else ""
    parts = [
        ("UNet", unet, unet_sources(shapes, unet.config.layers_per_block)),
        ("VAE", vae, vae_sources(shapes, len(vae.config.block_out_channels))),
        ("text encoder", text_encoder, text_sources(shapes, text_config.num_hidden_layers, text_root)),
    ]
    for what, model, sources in parts:
        _check_fit(what, model, sources, shapes, file.path)

    from safetensors import safe_open

    with safe_open(str(file.path), framework="pt") as f:
        for _, model, sources in parts:
            state = {name: _read(f, sources[name], param.shape, dtype or torch.float32)
                     for name, param in model.named_parameters()}
            model.load_state_dict(state, strict=False, assign=True)
    _recreate_position_ids(text_encoder)
    for what, model, _ in parts:
        _check_materialized(what, model)
    tokenizer = CLIPTokenizer.from_pretrained(str(config / "tokenizer"), local_files_only=True)
    return unet.eval(), vae.eval(), text_encoder.eval(), tokenizer


# --------------------------------------------------------------------------------------------- checks

def check_single_file(path: PathLike, *, in_channels: int = SD21_BASE.in_channels,
                      cross_attention_dim: int = SD21_BASE.cross_attention_dim) -> WeightsFile:
    """The file's parsed header, once it is known to be a complete SD 2.x text-to-image checkpoint.

    Reads the header only (and one small tensor for the v-prediction hint). Raises :class:`CheckpointError`
    naming what the file is instead; warns for a 768-v model, which loads but is not what FlowSR was trained on.
    The UNet's input channels and cross-attention width are SD 2.x's unless a (test) config says otherwise.
    """
    file = read_weights_file(path)  # refuses pickles, truncated and non-safetensors files
    names = file.tensors.keys()
    name = file.path.name

    def holds(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in names)

    if holds("conditioner.embedders."):
        raise CheckpointError(f"{name} is an SDXL checkpoint (it has conditioner.embedders.*), not SD 2.x. "
                              f"{SD21_BASE.help}")
    if file.kind != SD_SINGLE_FILE:
        raise CheckpointError(f"{name} is not a Stable Diffusion single-file checkpoint: it looks like a "
                              f"{file.kind}. {SD21_BASE.help}")
    if not holds(UNET_PREFIX + "input_blocks."):
        raise CheckpointError(f"{name} holds a diffusion model of another architecture (no UNet input_blocks; "
                              f"SD3, Flux or similar). {SD21_BASE.help}")
    if holds("cond_stage_model.transformer."):
        raise CheckpointError(f"{name} is an SD 1.x checkpoint (CLIP ViT-L text encoder, "
                              f"cond_stage_model.transformer.*), not SD 2.x. {SD21_BASE.help}")
    conv_in = file.tensors.get(UNET_PREFIX + "input_blocks.0.0.weight")
    found_channels = conv_in["shape"][1] if conv_in else in_channels  # if absent, the fit check names it
    if found_channels != in_channels:
        what = _IN_CHANNEL_VARIANTS.get(found_channels, f"a UNet with {found_channels} input channels")
        raise CheckpointError(f"{name} is {what}, not the {in_channels}-channel text-to-image SD 2.1-base. "
                              f"{SD21_BASE.help}")
    context = _cross_attention_width(file)
    if context is not None and context != cross_attention_dim:
        family = CROSS_ATTENTION_WIDTHS.get(context, "not SD 2.x")
        raise CheckpointError(f"{name} has a UNet with cross-attention width {context} ({family}) where SD 2.x "
                              f"has {cross_attention_dim}. {SD21_BASE.help}")
    if holds(UNET_PREFIX + "label_emb."):
        raise CheckpointError(f"{name} is a class-conditioned SD 2.x variant (unCLIP or similar: its UNet has "
                              f"label_emb.*), not SD 2.1-base. {SD21_BASE.help}")
    for prefix, part in ((VAE_PREFIX, "VAE"), (TEXT_PREFIX, "OpenCLIP text encoder")):
        if not holds(prefix):
            raise CheckpointError(f"{name} holds no {part} ({prefix}*): it is not a complete SD 2.1 checkpoint. "
                                  f"{SD21_BASE.help}")
    if _looks_v_prediction(file):
        warnings.warn(f"{name} looks like an SD 2.x 768-v (v-prediction) model. It loads, but FlowSR was "
                      "trained on SD 2.1-base (512, epsilon prediction): results may be worse; prefer "
                      "v2-1_512-ema-pruned.safetensors.", stacklevel=2)
    return file


def _cross_attention_width(file: WeightsFile) -> Optional[int]:
    """The width of the text features the UNet attends to: 768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL."""
    for key, entry in file.tensors.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return entry["shape"][1]
    return None


def _looks_v_prediction(file: WeightsFile) -> bool:
    """The weights alone do not say; as ComfyUI does, read it from the spread of the UNet's last norm1 bias.

    A heuristic (epsilon models keep that bias near zero, 768-v models do not), good for a warning only.
    """
    pattern = re.compile(re.escape(UNET_PREFIX) + r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias")
    matches = [match for match in map(pattern.fullmatch, file.tensors) if match]
    if not matches:
        return False
    last = max(matches, key=lambda match: int(match[1]))[0]
    from safetensors import safe_open

    with safe_open(str(file.path), framework="pt") as f:
        bias = f.get_tensor(last).float()
    return bias.std(unbiased=False).item() > 0.09


def _check_fit(what: str, model: nn.Module, sources: Dict[str, Source], shapes: Shapes, path: Path) -> None:
    """Every parameter has a source of the right shape, and every source a parameter; else say which not."""
    params = dict(model.named_parameters())
    missing = sorted(params.keys() - sources.keys())
    unexpected = sorted(sources[name].key for name in sources.keys() - params.keys())
    if missing or unexpected:
        raise CheckpointError(f"the {what} in {path.name} does not match the SD 2.1-base {what}: "
                              f"missing {_few(missing)}; unexpected {_few(unexpected)}. {SD21_BASE.help}")
    for name, param in params.items():
        source = sources[name]
        if not _fits(_source_shape(source, shapes), tuple(param.shape)):
            raise CheckpointError(f"the {what} in {path.name} does not match the SD 2.1-base {what}: "
                                  f"{source.key} has shape {list(shapes[source.key])} where {name} needs "
                                  f"{list(param.shape)}; it was made for another architecture. {SD21_BASE.help}")


def _few(names: Sequence[str], shown: int = 3) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _source_shape(source: Source, shapes: Shapes) -> Tuple[int, ...]:
    shape = shapes[source.key]
    return shape if source.third is None else (shape[0] // 3, *shape[1:])


def _fits(shape: Tuple[int, ...], target: Tuple[int, ...]) -> bool:
    """Equal, or equal but for trailing 1x1 dims: a 1x1 conv standing where diffusers has a linear layer."""
    return shape[:len(target)] == target and all(size == 1 for size in shape[len(target):])


# --------------------------------------------------------------------------------------------- loading

def _read(f, source: Source, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """One parameter from the open safetensors file ``f``, in the shape and dtype its module wants."""
    tensor = f.get_tensor(source.key)
    if source.third is not None:
        tensor = tensor.chunk(3)[source.third].clone()  # a copy: q, k and v must not share one storage
    return tensor.reshape(shape).to(dtype)


def _recreate_position_ids(text_encoder: nn.Module) -> None:
    """CLIP's one buffer, ``position_ids`` (0..76), is not in checkpoints; the meta-device build left it empty."""
    embeddings = getattr(text_encoder, "text_model", text_encoder).embeddings
    positions = embeddings.position_embedding.num_embeddings
    embeddings.position_ids = torch.arange(positions).expand(1, -1)


def _check_materialized(what: str, model: nn.Module) -> None:
    """Guards against a library version that adds a parameter or buffer this loader does not fill."""
    empty = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if empty:
        raise CheckpointError(f"the {what} has tensors this loader does not fill ({_few(empty)}): this "
                              "diffusers/transformers version is not supported for single-file loading; load a "
                              "diffusers folder of SD 2.1-base instead")


# --------------------------------------------------------------------------------------------- key mapping
# Each function maps the diffusers/transformers state-dict names of one part to their source in the file.
# Keys they do not know keep their LDM name, so they surface as "unexpected" in the fit check.

_RESNET_MODULES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                   "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_UNET_MODULES = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
                 "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
# ``input_blocks.{i}.{j}.…`` and ``output_blocks.{i}.{j}.…``; the middle block has no ``{j}``.
_UNET_BLOCK = re.compile(r"(input_blocks|middle_block|output_blocks)\.(\d+)\.(?:\d+\.)?(.+)")


def unet_sources(keys: Iterable[str], layers_per_block: int) -> Dict[str, Source]:
    """Diffusers UNet names from the LDM UNet's.

    LDM numbers the UNet's layers in one flat list per side: ``input_blocks.i`` counts ``layers_per_block``
    layers and then a downsampler for each resolution (after ``input_blocks.0``, the ``conv_in``), and
    ``output_blocks.i`` counts ``layers_per_block + 1`` layers per resolution, the upsampler inside the last.
    Inside one entry, ``.0`` is a ResBlock (or a lone resampler) and ``.1`` a SpatialTransformer or an upsampler;
    the submodule's own names tell them apart.
    """
    return {unet_key(key[len(UNET_PREFIX):], layers_per_block): Source(key)
            for key in keys if key.startswith(UNET_PREFIX)}


def unet_key(key: str, layers_per_block: int) -> str:
    module, _, param = key.rpartition(".")
    if module in _UNET_MODULES:
        return f"{_UNET_MODULES[module]}.{param}"
    match = _UNET_BLOCK.fullmatch(key)
    if not match:
        return key
    side, number, rest = match[1], int(match[2]), match[3]
    if side == "middle_block":  # ResBlock, SpatialTransformer, ResBlock
        return _unet_layer("mid_block", {0: 0, 1: 0, 2: 1}.get(number, number), rest)
    if side == "input_blocks":
        block, index = divmod(number - 1, layers_per_block + 1)
        return _unet_layer(f"down_blocks.{block}", index, rest)
    block, index = divmod(number, layers_per_block + 1)
    return _unet_layer(f"up_blocks.{block}", index, rest)


def _unet_layer(block: str, index: int, rest: str) -> str:
    """Name one LDM layer inside a diffusers block by what it holds."""
    head = rest.split(".")[0]
    if head == "op":  # Downsample's conv
        return f"{block}.downsamplers.0.conv.{rest[len('op.'):]}"
    if head == "conv":  # Upsample's conv
        return f"{block}.upsamplers.0.{rest}"
    if head in ("in_layers", "emb_layers", "out_layers", "skip_connection"):
        module, _, param = rest.rpartition(".")
        return f"{block}.resnets.{index}.{_RESNET_MODULES.get(module, module)}.{param}"
    return f"{block}.attentions.{index}.{rest}"  # SpatialTransformer: the same names inside in both layouts


_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def vae_sources(keys: Iterable[str], num_blocks: int) -> Dict[str, Source]:
    """Diffusers AutoencoderKL names from the LDM autoencoder's.

    The LDM decoder numbers its ``up`` levels from the lowest resolution's end backwards (``up.{n-1}`` runs
    first), diffusers' ``up_blocks`` in the order they run. The mid-block attention's 1x1 convolutions become
    linear layers (``_fits`` / ``_read`` drop the 1x1).
    """
    def up(match: re.Match) -> int:  # LDM's decoder level -> diffusers' up block
        return num_blocks - 1 - int(match[1])

    rules = [
        (r"(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
        (r"encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
        (r"encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
        (r"decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{up(m)}.resnets."),
        (r"decoder\.up\.(\d+)\.upsample\.", lambda m: f"decoder.up_blocks.{up(m)}.upsamplers.0."),
        (r"(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
        (r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.",
         lambda m: f"{m[1]}.mid_block.attentions.0.{_VAE_ATTENTION.get(m[2], m[2])}."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
    ]
    sources = {}
    for key in keys:
        if key.startswith(VAE_PREFIX):
            name = key[len(VAE_PREFIX):]
            for pattern, replacement in rules:
                name = re.sub(pattern, replacement, name)
            sources[name] = Source(key)
    return sources


_TEXT_TOP = {"token_embedding.weight": "embeddings.token_embedding.weight",
             "positional_embedding": "embeddings.position_embedding.weight",
             "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
_TEXT_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
               "attn.out_proj": "self_attn.out_proj"}
#: OpenCLIP tensors a CLIPTextModel has no place for (the projection belongs to CLIPTextModelWithProjection).
_TEXT_UNUSED = {"text_projection", "logit_scale"}
_TEXT_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)\.(\w+)")


def text_sources(keys: Iterable[str], num_layers: int, root: str = "text_model.") -> Dict[str, Source]:
    """transformers CLIPTextModel names (under ``root``) from OpenCLIP's text tower.

    SD 2.x conditions on the penultimate layer's output (then the final layer norm), so the diffusers text
    encoder has ``num_layers`` = 23 of the file's 24 blocks; the last one is left out. OpenCLIP fuses q, k and v
    into one ``in_proj``; transformers keeps three projections, each one third of it.
    """
    sources = {}
    for key in keys:
        if not key.startswith(TEXT_PREFIX):
            continue
        name = key[len(TEXT_PREFIX):]
        match = _TEXT_BLOCK.fullmatch(name)
        if name in _TEXT_UNUSED or (match and int(match[1]) >= num_layers):
            continue
        if name in _TEXT_TOP:
            sources[root + _TEXT_TOP[name]] = Source(key)
        elif match and match.group(2, 3) in (("attn", "in_proj_weight"), ("attn", "in_proj_bias")):
            layer, param = match[1], match[3][len("in_proj_"):]
            for third, projection in enumerate(("q_proj", "k_proj", "v_proj")):
                sources[f"{root}encoder.layers.{layer}.self_attn.{projection}.{param}"] = Source(key, third)
        elif match:
            module = _TEXT_LAYER.get(match[2], match[2])
            sources[f"{root}encoder.layers.{match[1]}.{module}.{match[3]}"] = Source(key)
        else:
            sources[root + name] = Source(key)
    return sources
