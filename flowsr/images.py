"""Between what users hand us (PIL images of any common mode, numpy arrays, torch tensors) and what the
pipeline works on: float RGB tensors (B, 3, H, W) in [0, 1], with an optional alpha channel carried beside.

Each input kind comes back as the same kind: a PIL image of the same mode family, a numpy array with the
same dtype and layout, a tensor with the same layout on the same device. The result is allocated once, in the
caller's kind (8 or 16 bits for images and integer arrays), and filled rectangle by rectangle as the pipeline
finishes them (:class:`Output`), so no float copy of a whole large output is ever made for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image

from .errors import BadInputError
from .image_rules import PLAIN_PIL_MODES
from .resample import resize_region

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]

#: PIL modes we take, by what we turn them into before upscaling (the plain ones are taken as they are).
_PIL_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV"}
_PIL_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}

# ITU-R BT.601 luma: how a grey output is taken from the RGB the model produces.
_LUMA = torch.tensor([0.299, 0.587, 0.114])
#: Float pixels further than this outside [0, 1] are on another scale, not the overshoot of some arithmetic.
FLOAT_SLACK = 0.5


@dataclass
class Batch:
    """Pixels ready for the pipeline, and what the result must be given back as."""
    rgb: torch.Tensor                     # (B, 3, H, W) float32 in [0, 1]
    alpha: Optional[torch.Tensor]         # (B, 1, H, W) float32 in [0, 1] or None
    grey: bool                            # the input had one colour channel
    kind: str                             # "pil", "numpy" or "torch"
    dtype: Union[np.dtype, torch.dtype]   # the result's element type
    peak: float = 1.0                     # the value of white in that type
    layout_ndim: int = 4                  # numpy: 2 (HW), 3 (HWC), 4 (BHWC); torch: 3 (CHW), 4 (BCHW)
    device: Optional[torch.device] = None  # torch: where the result goes


#: What a wrong channel count most likely means, by the kind of input: its channels on the other side.
_LAYOUT_HINTS = {
    "torch": "torch tensors are channels first, CHW or BCHW: pass an HWC tensor as tensor.permute(2, 0, 1) "
             "(BHWC: tensor.permute(0, 3, 1, 2))",
    "numpy": "numpy arrays are channels last, HW, HWC or BHWC: pass a CHW array as array.transpose(1, 2, 0) "
             "(BCHW: array.transpose(0, 2, 3, 1))",
}


def split_channels(pixels: torch.Tensor, kind: str = "") -> tuple[torch.Tensor, Optional[torch.Tensor], bool]:
    """(rgb, alpha, grey) from a (B, C, H, W) tensor with C in 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA); ``kind``
    ("torch", "numpy") adds to a wrong count's message how that kind lays out its channels."""
    channels = pixels.shape[1]
    if channels not in (1, 2, 3, 4):
        hint = f"; {_LAYOUT_HINTS[kind]}" if kind in _LAYOUT_HINTS else ""
        raise BadInputError(f"images need 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) channels, got {channels} "
                            f"(shape {tuple(pixels.shape)} as BCHW){hint}")
    grey = channels <= 2
    colour = pixels[:, :1].expand(-1, 3, -1, -1) if grey else pixels[:, :3]
    alpha = pixels[:, -1:] if channels in (2, 4) else None
    return colour, alpha, grey


def join_channels(rgb: torch.Tensor, alpha: Optional[torch.Tensor], grey: bool) -> torch.Tensor:
    """The inverse of :func:`split_channels` on upscaled pixels."""
    colour = (rgb * _LUMA.to(rgb).reshape(1, 3, 1, 1)).sum(1, keepdim=True) if grey else rgb
    return colour if alpha is None else torch.cat([colour, alpha.to(colour)], 1)


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
        rgb, alpha, grey = split_channels(torch.from_numpy(np.clip(array / peak, 0, 1))[None, None])
        return Batch(rgb, alpha, grey, "pil", np.dtype(np.uint16 if peak > 255 else np.uint8), peak, 2)
    if image.mode not in PLAIN_PIL_MODES:
        raise BadInputError(f"unsupported image mode {mode!r}; convert the image to RGB or RGBA first")
    array = np.asarray(image)
    batch = _from_numpy(array if array.ndim == 3 else array[..., None])
    batch.kind = "pil"
    return batch


def _from_numpy(array: np.ndarray) -> Batch:
    """HW, HWC or BHWC arrays; uint8, uint16 or float in [0, 1]."""
    if array.ndim not in (2, 3, 4):
        raise BadInputError(f"numpy images must be HW, HWC or BHWC, got shape {array.shape}")
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
    if np.issubdtype(dtype, np.floating):  # integers are in range by their type
        check_float_range(pixels)
    rgb, alpha, grey = split_channels(pixels.clamp(0, 1), "numpy")
    return Batch(rgb, alpha, grey, "numpy", dtype, peak, array.ndim)


def check_float_range(pixels: torch.Tensor) -> None:
    """Refuse pixels far outside [0, 1]: they are on another scale (0..255), and clamped they would be a white
    image. A little overshoot, from other nodes' arithmetic, is clamped. NaN and emptiness are the pipeline's to
    name."""
    if pixels.numel() == 0:
        return
    low, high = float(pixels.min()), float(pixels.max())
    if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
        raise BadInputError(f"the image's values run from {low:g} to {high:g}, but float images are read in [0, 1]; "
                            "divide an image in 0..255 by 255 first")


def _from_torch(tensor: torch.Tensor) -> Batch:
    """CHW or BCHW float tensors in [0, 1]."""
    if tensor.ndim not in (3, 4) or not tensor.is_floating_point():
        raise BadInputError(f"tensors must be float CHW or BCHW in [0, 1], got {tuple(tensor.shape)} {tensor.dtype}")
    pixels = (tensor[None] if tensor.ndim == 3 else tensor).detach().float().cpu()
    check_float_range(pixels)
    rgb, alpha, grey = split_channels(pixels.clamp(0, 1), "torch")
    return Batch(rgb, alpha, grey, "torch", tensor.dtype, 1.0, tensor.ndim, tensor.device)


def to_batch(image: ImageLike) -> Batch:
    """Any supported image kind to a :class:`Batch`."""
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_numpy(image)
    if isinstance(image, torch.Tensor):
        return _from_torch(image)
    raise BadInputError(f"cannot upscale a {type(image).__name__}; pass a PIL image, a numpy array or a tensor")


class Output:
    """The upscaled batch in the caller's kind, written rectangle by rectangle.

    Alpha is resized on its own (bicubic) for each rectangle and re-attached; grey images come back grey.
    """

    def __init__(self, batch: Batch, size: tuple[int, int]):
        self.batch, self.size = batch, size
        images = batch.rgb.shape[0]
        channels = (1 if batch.grey else 3) + (batch.alpha is not None)
        if batch.kind == "torch":
            self.pixels = torch.empty(images, channels, *size, dtype=batch.dtype, device=batch.device)
        else:
            self.pixels = np.empty((images, *size, channels), dtype=batch.dtype)

    @classmethod
    def of_tensor(cls, rgb: torch.Tensor, size: tuple[int, int]) -> "Output":
        """(B, 3, H, W) float32 on ``rgb``'s device: what :meth:`FlowSRPipeline.upscale_tensor` returns."""
        return cls(Batch(rgb, None, False, "torch", torch.float32, device=rgb.device), size)

    def write(self, image: int, rows: slice, cols: slice, rgb: torch.Tensor) -> None:
        """Put upscaled RGB (3, h, w) in [0, 1] at ``rows`` x ``cols`` of image ``image``."""
        alpha = None
        if self.batch.alpha is not None:
            alpha = resize_region(self.batch.alpha[image:image + 1], self.size, torch.arange(rows.start, rows.stop),
                                  torch.arange(cols.start, cols.stop), "bicubic", rgb.device).clamp(0, 1)
        pixels = join_channels(rgb[None], alpha, self.batch.grey)[0]
        if self.batch.kind == "torch":
            self.pixels[image, :, rows, cols] = pixels.to(self.pixels)
            return
        values = pixels.permute(1, 2, 0).cpu().numpy()
        if self.batch.peak > 1:
            values = (values * self.batch.peak).round()
        self.pixels[image, rows, cols] = values.astype(self.batch.dtype)

    def result(self) -> ImageLike:
        pixels, ndim = self.pixels, self.batch.layout_ndim
        if self.batch.kind == "torch":
            return pixels[0] if ndim == 3 else pixels
        array = pixels[0] if ndim == 3 else pixels[0, ..., 0] if ndim == 2 else pixels
        if self.batch.kind == "pil":
            return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
        return array
