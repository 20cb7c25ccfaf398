"""FlowSR: one-step image super-resolution by consistency rectified flow (Xu et al., ICCV 2025).

Load once, upscale many::

    import flowsr
    pipe = flowsr.FlowSRPipeline.from_pretrained()            # the small built-in model
    pipe = flowsr.FlowSRPipeline.from_pretrained("flowsr.safetensors", base_model="v2-1_512-ema-pruned.safetensors")
    big = pipe.upscale(image, scale=4)                        # PIL, numpy or torch in; the same kind out
"""
from .errors import BadInputError, Cancelled, CheckpointError, FlowSRError, OutOfMemoryError

#: How hosts list the model that ships inside the package.
BUILTIN_MODEL_NAME = "FlowSR tiny (built-in)"

__version__ = "0.1.0"
__all__ = ["FlowSRPipeline", "FlowSRError", "BadInputError", "CheckpointError", "Cancelled", "OutOfMemoryError",
           "BUILTIN_MODEL_NAME"]


def __getattr__(name: str):
    """``flowsr.FlowSRPipeline`` on first use: the command line answers bad input without importing torch."""
    if name == "FlowSRPipeline":
        from .pipeline import FlowSRPipeline

        return FlowSRPipeline
    raise AttributeError(f"module 'flowsr' has no attribute {name!r}")


def __dir__() -> list[str]:
    """``dir(flowsr)`` lists the lazily imported ``FlowSRPipeline`` too (tab completion finds it)."""
    return sorted(set(globals()) | set(__all__))
