"""Diffusers names back to the original LDM layout: the plain inverse of ``flowsr.models.single_file``'s rules.

Written independently of those rules, so that a file built with these names tests them (tests/core) and a
full-size random single file can be built for the benchmark (bench/bench_single_file.py).
"""
from __future__ import annotations

import re

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def ldm_unet_key(name: str, layers: int, attention_up: list) -> str:
    """A diffusers UNet name in the LDM layout (the inverse of ``single_file.unet_key``)."""
    module, _, param = name.rpartition(".")
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        slot = f"input_blocks.{1 + int(m[1]) * (layers + 1) + int(m[3])}"
        return _ldm_layer(slot, m[2], m[4])
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        return _ldm_layer(f"output_blocks.{int(m[1]) * (layers + 1) + int(m[3])}", m[2], m[4])
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", name):
        return f"input_blocks.{1 + int(m[1]) * (layers + 1) + layers}.0.op.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", name):
        block = int(m[1])
        return f"output_blocks.{block * (layers + 1) + layers}.{2 if attention_up[block] else 1}.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", name):
        return _ldm_layer(f"middle_block.{2 * int(m[2]) if m[1] == 'resnets' else 1}", m[1], m[3], nested=False)
    raise AssertionError(f"no LDM name for {name}")


def _ldm_layer(slot: str, kind: str, rest: str, nested: bool = True) -> str:
    if kind == "attentions":
        return f"{slot}.1.{rest}" if nested else f"{slot}.{rest}"
    module, _, param = rest.rpartition(".")
    return f"{slot}.0.{_RESNET[module]}.{param}" if nested else f"{slot}.{_RESNET[module]}.{param}"


def ldm_vae_key(name: str, levels: int) -> str:
    """A diffusers AutoencoderKL name in the LDM layout (the inverse of ``single_file.vae_sources``)."""
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    name = name.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    name = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", name)
    name = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", name)
    name = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{levels - 1 - int(m[1])}.block.", name)
    name = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{levels - 1 - int(m[1])}.upsample.", name)
    name = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", name)
    return re.sub(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.",
                  lambda m: f"mid.attn_1.{attention[m[1]]}.", name)
