"""The three FlowSR nodes, described once; ``v3.py`` and ``v1.py`` turn this into ComfyUI's two node APIs.

Inputs are listed in the order ComfyUI shows them (and stores widget values in workflows).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .. import flowsr
from ..flowsr.color import COLOR_FIXES
from ..flowsr.families import SD21_BASE
from ..flowsr.flow import SCHEDULES
from ..flowsr.pipeline import MAX_SCALE, MIN_SCALE
from . import host

CATEGORY = "image/upscaling"
#: The socket type between the loader and the upscalers.
MODEL_TYPE = "FLOWSR_MODEL"
#: The largest seed ComfyUI's widgets hold (and torch.Generator takes).
MAX_SEED = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Param:
    """One input or output. ``type`` is ComfyUI's: INT, FLOAT, COMBO, IMAGE, FLOWSR_MODEL."""
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

    @property
    def is_widget(self) -> bool:
        return self.type in ("INT", "FLOAT", "COMBO")


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
SCALE = Param("scale", "FLOAT", "How many times larger the output is, on each side.",
              default=4.0, min=MIN_SCALE, max=MAX_SCALE, step=0.05)
TILE_SIZE = Param(
    "tile_size", "INT",
    "Tile side in latent pixels (x8 image pixels for SD 2.1, x4 for the built-in model); big images are "
    "upscaled tile by tile so memory stays bounded. -1: chosen from free memory. 0: no tiling. "
    "Smaller tiles need less memory; out of memory, tiles shrink by themselves.",
    default=-1, min=-1, max=1024, step=1)
TILE_OVERLAP = Param(
    "tile_overlap", "INT",
    "Latent pixels that neighbouring tiles share and blend, hiding seams. -1: the model's default.",
    default=-1, min=-1, max=512, step=1)
COLOR_FIX = Param(
    "color_fix", "COMBO",
    "Match colours to the input: wavelet keeps the output's detail and the input's colour (recommended), "
    "adain matches each channel's mean and spread, none keeps the model's colours.",
    default="wavelet", options=_choices(*COLOR_FIXES))
SEED = Param(
    "seed", "INT",
    "-1: use the mean of the encoder's latent, the same output every run. 0 or more: sample the latent with "
    "this seed, as the reference implementation does (slightly different grain per seed).",
    default=-1, min=-1, max=MAX_SEED, step=1, control_after_generate=False)
STEPS = Param("steps", "INT", "Flow steps: 1 is FlowSR's one-step result; more steps refine it, each as costly "
              "as one step.", default=4, min=1, max=50, step=1)
SCHEDULE = Param(
    "schedule", "COMBO",
    "Where the steps fall on the flow from the input (t=1) to the result (t=0): uniform is the paper's even "
    "grid; sd3 is the shifted grid of the reference implementation, with more steps near the input.",
    default="uniform", options=_choices(*SCHEDULES))
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
              f"published model: it applies to the {SD21_BASE.name} model chosen below.",
              default=flowsr.BUILTIN_MODEL_NAME, options=host.weight_choices),
        Param("base_model", "COMBO",
              f"{SD21_BASE.full_name} for flowsr.safetensors: the single file {SD21_BASE.single_file} "
              f"from models/checkpoints, or a diffusers folder from models/diffusers ('{host.DIFFUSERS_PREFIX}...'). "
              f"'{host.NO_BASE_MODEL}' for the built-in model.",
              default=host.NO_BASE_MODEL, options=host.base_model_choices),
        Param("dtype", "COMBO",
              "Precision of the weights. auto follows ComfyUI's choice for the device (bf16 or fp16 on GPUs, "
              "fp32 on the CPU); fp32 is the most exact and takes twice the memory of fp16/bf16.",
              default="auto", options=_choices(*host.DTYPES)),
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

NODES = (LOADER, UPSCALE, REFINE)
