"""Rules on images that hold before any pixel is read, in one torch-free place.

The pipeline checks its inputs against them, and the command line checks a job's files against them (from the
headers alone) without importing torch.
"""
from __future__ import annotations

from .errors import BadInputError

#: PIL modes whose pixels are taken as they are (8-bit grey or RGB, with or without alpha), so that images of
#: one size and one of these modes stack into one uint8 array; the others are converted one by one first.
PLAIN_PIL_MODES = frozenset({"RGB", "RGBA", "L", "LA"})
#: Outputs beyond this many pixels (about 32k x 32k) are refused before any work starts.
MAX_OUTPUT_PIXELS = 1 << 30


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of the output of a ``height`` x ``width`` image upscaled by ``scale``."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def checked_output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """:func:`output_size`, refused with a :class:`BadInputError` if beyond :data:`MAX_OUTPUT_PIXELS`."""
    out_height, out_width = output_size(height, width, scale)
    if out_height * out_width > MAX_OUTPUT_PIXELS:
        raise BadInputError(f"{width}x{height} pixels at scale {scale:g} make a {out_width}x{out_height} output, "
                            f"more than the {MAX_OUTPUT_PIXELS:,} pixels this tool handles; upscale a smaller "
                            "image or use a smaller scale")
    return out_height, out_width
