"""The three FlowSR nodes, described once; ``v3.py`` and ``v1.py`` turn this into ComfyUI's two node APIs.

Inputs are listed in the order ComfyUI shows them (and stores widget values in workflows).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from .. import flowsr
from ..flowsr import options as flowsr_options
from ..flowsr.families import SD21_BASE
from ..flowsr.models.sd import POSITIVE_PROMPT
from . import host, native

CATEGORY = "image/upscaling"
#: The socket type between the loader and the upscalers.
MODEL_TYPE = "FLOWSR_MODEL"

@dataclass(frozen=True)
class Param:
    """One input or output. ``type`` is ComfyUI's: INT, FLOAT, COMBO, IMAGE, MODEL, VAE, CONDITIONING, FLOWSR_MODEL."""
    name: str
    type: str
    tooltip: str
    default: Any = None
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    #: COMBO choices, asked for each time ComfyUI lists the node (model files come and go).
    options: Optional[Callable[[], list[str]]] = None
    #: False keeps ComfyUI's frontend from adding its randomize/increment widget (it does for "seed").
    control_after_generate: Optional[bool] = None


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    display_name: str
    description: str
    inputs: tuple[Param, ...]
    output: Param
    run: Callable[..., Any] = field(repr=False)


def _choices(*values: str) -> Callable[[], list[str]]:
    return lambda: list(values)


MODEL_INPUT = Param("flowsr_model", MODEL_TYPE, "The model from 'Load FlowSR Model'.")
IMAGE_INPUT = Param("image", "IMAGE", "The images to upscale: an RGB batch of one size.")


def widget(option: flowsr_options.Option, step: float = 1) -> Param:
    """An upscale option as a widget, from its one definition; INT widgets hold automatic as -1."""
    if option.type is bool:
        return Param(option.name, "BOOLEAN", option.describe(), default=option.default)
    if option.choices:
        return Param(option.name, "COMBO", option.describe(), default=option.default,
                     options=_choices(*option.choices))
    return Param(option.name, "INT" if option.type is int else "FLOAT", option.describe(),
                 default=option.to_host(option.default), min=option.lowest, max=option.maximum, step=step)


SCALE = widget(flowsr_options.SCALE, step=0.05)
TILE_SIZE = widget(flowsr_options.TILE_SIZE)
TILE_OVERLAP = widget(flowsr_options.TILE_OVERLAP)
COLOR_FIX = widget(flowsr_options.COLOR_FIX)
#: No randomize/increment widget: -1 (the latent mean) is the reproducible default.
SEED = replace(widget(flowsr_options.SEED), control_after_generate=False)
#: The Refine node is there to take more than one step.
STEPS = replace(widget(flowsr_options.STEPS), default=4)
SCHEDULE = widget(flowsr_options.SCHEDULE)
IMAGE_OUTPUT = Param("IMAGE", "IMAGE", "The upscaled images.")

LOADER = NodeSpec(
    node_id="FlowSRLoader",
    display_name="Load FlowSR Model",
    description=f"Loads FlowSR super-resolution weights (and the {SD21_BASE.name} model they apply to) for the "
                "FlowSR Upscale and FlowSR Refine nodes. Loading the same files again reuses the loaded model.",
    inputs=(
        Param("flowsr_weights", "COMBO",
              f"'{flowsr.BUILTIN_MODEL_NAME}' is a small model inside the node pack that needs nothing else. "
              "flowsr.safetensors (Hugging Face: chunjie-spring/FlowSR), placed in models/flowsr, is the "
              f"published model: it applies to the {SD21_BASE.name} model chosen below. "
              f"'flowsr.safetensors{host.DOWNLOAD_SUFFIX}' downloads it into models/flowsr first if needed.",
              default=flowsr.BUILTIN_MODEL_NAME, options=host.weight_choices),
        Param("base_model", "COMBO",
              f"{SD21_BASE.full_name} for flowsr.safetensors: the single file {SD21_BASE.single_file} "
              f"from models/checkpoints, or a diffusers folder from models/diffusers ('{host.DIFFUSERS_PREFIX}...'). "
              f"'{SD21_BASE.single_file}{host.DOWNLOAD_SUFFIX}' downloads it into models/checkpoints first if "
              f"needed. '{host.NO_BASE_MODEL}' for the built-in model.",
              default=host.NO_BASE_MODEL, options=host.base_model_choices),
        Param("dtype", "COMBO",
              "Precision of the weights. auto follows ComfyUI's choice for the device (bf16 or fp16 on GPUs, "
              "fp32 on the CPU); fp32 is the most exact and takes twice the memory of fp16/bf16.",
              default=flowsr_options.DTYPE.default, options=_choices(*flowsr_options.DTYPE.choices)),
        widget(flowsr_options.COMPILE),
    ),
    output=Param("flowsr_model", MODEL_TYPE, "The loaded FlowSR model."),
    run=host.load,
)

UPSCALE = NodeSpec(
    node_id="FlowSRUpscale",
    display_name="FlowSR Upscale (one step)",
    description="Super-resolution in one step of FlowSR's rectified flow (Xu et al., ICCV 2025). "
                "Progress advances per tile; Cancel stops within one tile.",
    inputs=(MODEL_INPUT, IMAGE_INPUT, SCALE, TILE_SIZE, TILE_OVERLAP, COLOR_FIX, SEED),
    output=IMAGE_OUTPUT,
    run=host.upscale,
)

REFINE = NodeSpec(
    node_id="FlowSRRefine",
    display_name="FlowSR Refine (multi-step)",
    description="FlowSR with several Euler steps along the flow: slower than one step, sometimes cleaner. "
                "Progress advances per tile and step; Cancel stops within one tile.",
    inputs=(MODEL_INPUT, IMAGE_INPUT, SCALE, STEPS, SCHEDULE, TILE_SIZE, TILE_OVERLAP, COLOR_FIX, SEED),
    output=IMAGE_OUTPUT,
    run=host.upscale,
)

APPLY = NodeSpec(
    node_id="FlowSRApply",
    display_name="Apply FlowSR",
    description=f"Patches the public FlowSR weights (flowsr.safetensors) onto a {SD21_BASE.name} MODEL, as a LoRA "
                "through ComfyUI's model patching: the MODEL that comes in stays as it was for other nodes, other "
                "patches stack. Upscale with the 'FlowSR Upscale (ComfyUI model)' node.",
    inputs=(
        Param("model", "MODEL", f"{SD21_BASE.full_name} ({SD21_BASE.single_file}) from 'Load Checkpoint', or any "
                                "node that yields that MODEL."),
        Param("flowsr_weights", "COMBO",
              "flowsr.safetensors (Hugging Face: chunjie-spring/FlowSR) from models/flowsr: the public FlowSR LoRA.",
              options=native.weight_choices),
        Param("strength", "FLOAT", "How much of FlowSR to apply: 1.0 runs the weights as they were released; "
                                   "0 leaves the MODEL as it was.", default=1.0, min=0.0, max=2.0, step=0.01),
    ),
    output=Param("MODEL", "MODEL", "The MODEL with FlowSR applied, for 'FlowSR Upscale (ComfyUI model)'."),
    run=native.apply,
)

UPSCALE_MODEL = NodeSpec(
    node_id="FlowSRUpscaleModel",
    display_name="FlowSR Upscale (ComfyUI model)",
    description="FlowSR super-resolution in one step on ComfyUI's own networks: the MODEL from 'Apply FlowSR', "
                "the VAE and CLIP of the same checkpoint. ComfyUI's memory manager loads them as for its samplers "
                "(--lowvram, --novram, weight dtypes). Progress advances per tile; Cancel stops within one tile.",
    inputs=(
        Param("model", "MODEL", "The MODEL from 'Apply FlowSR'."),
        Param("vae", "VAE", f"The VAE of the {SD21_BASE.name} checkpoint (from 'Load Checkpoint')."),
        Param("conditioning", "CONDITIONING",
              f"'CLIP Text Encode (Prompt)' of the checkpoint's CLIP with FlowSR's prompt: \"{POSITIVE_PROMPT}\" "
              "(the public weights were trained with it; another prompt changes the result)."),
        IMAGE_INPUT, SCALE, TILE_SIZE, TILE_OVERLAP, COLOR_FIX, SEED),
    output=IMAGE_OUTPUT,
    run=native.upscale,
)

NODES = (LOADER, UPSCALE, REFINE, APPLY, UPSCALE_MODEL)
