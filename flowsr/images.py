"""Between what users hand us (PIL images of any common mode, numpy arrays, torch tensors) and what the
pipeline works on: float RGB tensors (B, 3, H, W) in [0, 1], with an optional alpha channel carried beside.

Each input kind comes back as the same kind: a PIL image of the same mode family, a numpy array with the
same dtype and layout, a tensor with the same layout on the same device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from PIL import Image

from .errors import BadInputError

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]

#: PIL modes we take, by what we turn them into before upscaling.
_PIL_AS_IS = {"RGB", "RGBA", "L", "LA"}
_PIL_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV"}
_PIL_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}

# ITU-R BT.601 luma: how a grey output is taken from the RGB the model produces.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclass
class Batch:
    """Pixels ready for the pipeline, and how to give the result back in the caller's kind."""
    rgb: torch.Tensor                     # (B, 3, H, W) float32 in [0, 1]
    alpha: Optional[torch.Tensor]         # (B, 1, H, W) float32 in [0, 1] or None
    grey: bool                            # the input had one colour channel
    restore: Callable[[torch.Tensor, Optional[torch.Tensor]], Any]


def split_channels(pixels: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor], bool]:
    """(rgb, alpha, grey) from a (B, C, H, W) tensor with C in 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA)."""
    channels = pixels.shape[1]
    if channels not in (1, 2, 3, 4):
        raise BadInputError(f"images need 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) channels, got {channels}")
    grey = channels <= 2
    colour = pixels[:, :1].expand(-1, 3, -1, -1) if grey else pixels[:, :3]
    alpha = pixels[:, -1:] if channels in (2, 4) else None
    return colour, alpha, grey


def join_channels(rgb: torch.Tensor, alpha: Optional[torch.Tensor], grey: bool) -> torch.Tensor:
    """The inverse of :func:`split_channels` on upscaled pixels."""
    colour = (rgb * _LUMA.to(rgb).reshape(1, 3, 1, 1)).sum(1, keepdim=True) if grey else rgb
    return colour if alpha is None else torch.cat([colour, alpha], 1)


def _from_pil(image: Image.Image) -> Batch:
    mode = image.mode
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode in _PIL_TO_RGB:
        image = image.convert("RGB")
    if image.mode in _PIL_SIXTEEN_BIT:
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        pixels = torch.from_numpy(np.clip(array / peak, 0, 1))[None, None]
        rgb, alpha, grey = split_channels(pixels)

        def restore_sixteen(rgb_out: torch.Tensor, alpha_out: Optional[torch.Tensor]) -> Image.Image:
            out = join_channels(rgb_out, alpha_out, grey)[0, 0].numpy()
            return Image.fromarray((out * peak).round().astype(np.uint16 if peak > 255 else np.uint8))
        return Batch(rgb, alpha, grey, restore_sixteen)
    if image.mode not in _PIL_AS_IS:
        raise BadInputError(f"unsupported image mode {mode!r}; convert the image to RGB or RGBA first")
    array = np.asarray(image)
    batch = _from_numpy(array if array.ndim == 3 else array[..., None])
    numpy_restore = batch.restore
    batch.restore = lambda rgb_out, alpha_out: Image.fromarray(_squeeze_grey(numpy_restore(rgb_out, alpha_out)))
    return batch


def _squeeze_grey(array: np.ndarray) -> np.ndarray:
    return array[..., 0] if array.shape[-1] == 1 else array


def _from_numpy(array: np.ndarray) -> Batch:
    """HW, HWC or BHWC arrays; uint8, uint16 or float in [0, 1]."""
    if array.ndim not in (2, 3, 4):
        raise BadInputError(f"numpy images must be HW, HWC or BHWC, got shape {array.shape}")
    layout_ndim = array.ndim
    batched = array[None] if array.ndim == 3 else array[None, ..., None] if array.ndim == 2 else array
    dtype = array.dtype
    if dtype == np.uint8:
        peak = 255.0
    elif dtype == np.uint16:
        peak = 65535.0
    elif np.issubdtype(dtype, np.floating):
        peak = 1.0
    else:
        raise BadInputError(f"numpy images must be uint8, uint16 or float in [0, 1], got {dtype}")
    pixels = torch.from_numpy(np.ascontiguousarray(batched, dtype=np.float32) / peak).permute(0, 3, 1, 2)
    rgb, alpha, grey = split_channels(pixels.clamp(0, 1))

    def restore(rgb_out: torch.Tensor, alpha_out: Optional[torch.Tensor]) -> np.ndarray:
        out = join_channels(rgb_out, alpha_out, grey).permute(0, 2, 3, 1).numpy()
        if peak > 1:
            out = (out * peak).round().astype(dtype)
        else:
            out = out.astype(dtype)
        return out[0] if layout_ndim == 3 else out[0, ..., 0] if layout_ndim == 2 else out
    return Batch(rgb, alpha, grey, restore)


def _from_torch(tensor: torch.Tensor) -> Batch:
    """CHW or BCHW float tensors in [0, 1]."""
    if tensor.ndim not in (3, 4) or not tensor.is_floating_point():
        raise BadInputError(f"tensors must be float CHW or BCHW in [0, 1], got {tuple(tensor.shape)} {tensor.dtype}")
    unbatched = tensor.ndim == 3
    pixels = (tensor[None] if unbatched else tensor).detach().float().cpu().clamp(0, 1)
    rgb, alpha, grey = split_channels(pixels)

    def restore(rgb_out: torch.Tensor, alpha_out: Optional[torch.Tensor]) -> torch.Tensor:
        out = join_channels(rgb_out, alpha_out, grey).to(device=tensor.device, dtype=tensor.dtype)
        return out[0] if unbatched else out
    return Batch(rgb, alpha, grey, restore)


def to_batch(image: ImageLike) -> Batch:
    """Any supported image kind to a :class:`Batch`."""
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_numpy(image)
    if isinstance(image, torch.Tensor):
        return _from_torch(image)
    raise BadInputError(f"cannot upscale a {type(image).__name__}; pass a PIL image, a numpy array or a tensor")
