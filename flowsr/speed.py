"""Levers on inference speed that leave the result as it is: compiled regions and the memory format.

- **Compiled regions** (opt-in, ``compile``): ``torch.compile`` of every block the velocity network is made of
  (diffusers' ``ResnetBlock2D`` and ``BasicTransformerBlock``), one region per block, the way diffusers'
  regional compilation does it: blocks of the same shape share their compiled code, no graph spans more than
  one block, and what runs between regions (the UNet's own glue, forward pre-hooks on its down, mid and up
  blocks) stays plain Python. Shapes: every tile of a plan has the plan's shape (border tiles are
  shifted inwards, :func:`flowsr.tiling.tile_starts`), so a plan compiles once, and another shape (the last,
  smaller group of a batch, another image size) makes dynamo recompile with that dimension symbolic
  (its automatic dynamic shapes), after which every size reuses it. Where the compiler is missing or fails,
  a warning says so and everything runs eagerly.
- **Channels-last**: convolution weights (and so activations) in NHWC order, where measured faster
  (:data:`CHANNELS_LAST_DEVICES`).

The autoencoder is not compiled: its GroupNorms are given per-image statistics for every tiled upscale
(:func:`flowsr.tiling.shared_group_norm_statistics`), which a compiled region would take as a change of code
and recompile for every image.
"""
from __future__ import annotations

import logging
import shutil
from typing import Any, Optional

import torch
from torch import nn

from .devices import is_out_of_memory

logger = logging.getLogger(__name__)

#: The blocks compiled one region each: the repeated building blocks of diffusers' UNets.
REGION_CLASSES = ("ResnetBlock2D", "BasicTransformerBlock")
#: Device types on which channels-last ran faster for the UNet and the VAE (bench/bench_speed.py): none yet
#: on this project's CPU measurements (README, "Speed"); CUDA is unmeasured, so it stays off there too.
CHANNELS_LAST_DEVICES: frozenset[str] = frozenset()
#: Compiled versions dynamo keeps of one piece of code before it runs it uncompiled: every region is compiled
#: from ``nn.Module._call_impl``, one version per block shape (and dtype, and memory format), and the SD 2.1
#: UNet alone has a few dozen shapes, where dynamo's default is 8.
RECOMPILE_LIMIT = 128


def compiler_problem(device: torch.device) -> Optional[str]:
    """Why ``torch.compile`` cannot run on ``device`` here, or None when it can."""
    if device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            compiler = get_cpp_compiler()
        except Exception as error:  # inductor raises when it finds none
            return f"no C++ compiler for torch.compile on the CPU ({error}); install gcc (g++)"
        return None if shutil.which(compiler) else f"the C++ compiler {compiler} is not installed; install gcc (g++)"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "torch.compile on CUDA needs Triton (pip install triton)"
    return f"torch.compile is not supported on {device.type} by FlowSR"


def is_compiler_failure(error: BaseException) -> bool:
    """True for the compiler's own failures (not running out of memory, not a model's error)."""
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(error, TorchDynamoException) and not is_out_of_memory(error)


class CompiledRegions:
    """The compiled blocks of one network; the first compiler failure turns them all back to eager."""

    def __init__(self, network: nn.Module, backend: Any = "inductor"):
        self.regions = [m for m in network.modules() if type(m).__name__ in REGION_CLASSES]
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        for region in self.regions:
            region.compile(backend=backend)
            region._compiled_call_impl = _GuardedCall(self, region, region._compiled_call_impl)

    def __len__(self) -> int:
        return len(self.regions)

    def fall_back(self, error: BaseException) -> None:
        logger.warning("torch.compile failed (%s: %s); running without it", type(error).__name__,
                       str(error).strip().splitlines()[0][:300] if str(error).strip() else "")
        self.remove()

    def remove(self) -> None:
        for region in self.regions:
            region._compiled_call_impl = None


class _GuardedCall:
    """What ``nn.Module.compile`` installs (the module's ``_compiled_call_impl``), with the fall-back around it."""

    def __init__(self, owner: CompiledRegions, region: nn.Module, compiled):
        self.owner, self.region, self.compiled = owner, region, compiled

    def __call__(self, *args, **kwargs):
        try:
            return self.compiled(*args, **kwargs)
        except Exception as error:
            if not is_compiler_failure(error):
                raise
            self.owner.fall_back(error)
            return self.region._call_impl(*args, **kwargs)


def compile_network(model: nn.Module, device: Optional[torch.device] = None,
                    backend: Any = "inductor") -> Optional[CompiledRegions]:
    """Compile the blocks of ``model.denoiser`` for ``device`` (default: where the model is; compilation itself
    happens on their first call), or say why not and leave the model eager (None)."""
    device = device or next(model.parameters()).device
    problem = compiler_problem(torch.device(device)) if backend == "inductor" else None
    if problem is not None:
        logger.warning("torch.compile is not used: %s; running without it", problem)
        return None
    return CompiledRegions(model.denoiser, backend)


def use_channels_last(model: nn.Module, enabled: Optional[bool] = None) -> nn.Module:
    """Put the UNet's and the VAE's weights channels-last (None: where measured faster for the device)."""
    if enabled is None:
        enabled = next(model.parameters()).device.type in CHANNELS_LAST_DEVICES
    memory_format = torch.channels_last if enabled else torch.contiguous_format
    for part in (model.denoiser, model.autoencoder):
        part.to(memory_format=memory_format)
    return model
