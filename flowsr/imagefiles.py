"""Image files on disk, for the command line: read upright and bounded, written whole or not at all.

A picture is read with its EXIF orientation applied and its colour profile (and EXIF, less the orientation)
kept for the output. 16-bit colour PNGs, which PIL decodes to 8 bits, are read and written with pypng as uint16
arrays, so that 16 bits in give 16 bits out (16-bit grey is PIL's own "I;16"). Its size is known from the header before any pixel is decoded, so that a
decompression bomb is refused without being decoded. Outputs are written to a unique temporary file
beside the destination, synced, and renamed over it: a reader, a crash or a second run sees the old file
or the new one, never half of one.
"""
from __future__ import annotations

import glob
import io
import os
import zlib
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
#: What each output format can carry over from the input.
_METADATA_BY_FORMAT = {"PNG": ("icc_profile", "exif"), "JPEG": ("icc_profile", "exif"),
                       "WEBP": ("icc_profile", "exif"), "TIFF": ("icc_profile",)}
_ORIENTATION_TAG = 0x0112
_SIDEWAYS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
TEMPORARY_SUFFIX = ".flowsr-part"
#: Temporary outputs are created with mode 0o666 and these flags, not by ``tempfile.mkstemp``, which makes them
#: private (0o600): so the kernel gives them what the umask allows, as any new file, and no one reads the umask.
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


#: How :func:`read_header` names the modes PIL has no image for: 16-bit colour, read as uint16 arrays.
SIXTEEN_BIT_COLOUR_MODES = {"RGB": "RGB;16", "RGBA": "RGBA;16"}
#: Each EXIF orientation undone on an (H, W, C) array, as ImageOps.exif_transpose does on an image.
_UPRIGHT_ARRAY = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                  5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 1)[::-1],
                  8: lambda a: np.rot90(a, 1)}


@dataclass
class Picture:
    """Decoded, upright pixels and the metadata to write back beside the upscaled ones; 16-bit colour as a
    uint16 (H, W, C) array."""
    image: Image.Image | np.ndarray
    metadata: dict
    #: Frames in the file (an animated GIF, PNG or WebP, a multi-page TIFF): only the first is upscaled.
    frames: int = 1


def _open(path: Path) -> Image.Image:
    """Open the header only; every reason PIL refuses a file becomes a :class:`BadInputError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # sizes are checked by the caller
            return Image.open(path)
    except Image.DecompressionBombError as error:
        raise BadInputError(f"too large to decode safely: {error}") from None
    except UnidentifiedImageError:
        raise BadInputError("not an image that PIL can read") from None
    except OSError as error:
        raise BadInputError(f"cannot read it ({error})") from None


def read_header(path: Path) -> tuple[int, int, str]:
    """(width, height, PIL mode) with the EXIF orientation applied, read from the header without decoding."""
    with _open(path) as image:
        width, height = image.size
        sideways = _orientation(image) in _SIDEWAYS
        mode = SIXTEEN_BIT_COLOUR_MODES[image.mode] if _is_16_bit_colour(image) else image.mode
        return (height, width, mode) if sideways else (width, height, mode)


def _orientation(image: Image.Image) -> Optional[int]:
    """The EXIF orientation, or None: also for a damaged EXIF block, with which the image is read as it is."""
    try:
        return image.getexif().get(_ORIENTATION_TAG)
    except Exception:  # PIL raises many kinds of errors for damaged EXIF
        return None


def _is_16_bit_colour(image: Image.Image) -> bool:
    """A PNG whose colour PIL would decode to 8 bits (its raw mode says 16: ``RGB;16B``)."""
    return (image.format == "PNG" and image.mode in SIXTEEN_BIT_COLOUR_MODES and bool(image.tile)
            and ";16" in str(image.tile[0][3]))


def read_picture(path: Path) -> Picture:
    """The decoded image, turned upright, with its ICC profile and EXIF (orientation removed)."""
    image = _open(path)
    sixteen_bit_colour = _is_16_bit_colour(image)  # before load(), which drops the raw mode
    frames = getattr(image, "n_frames", 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data behind a good header
        image.close()
        raise BadInputError(f"cannot decode it ({error})") from None
    except MemoryError:
        image.close()
        raise BadInputError("not enough memory to decode it; upscale it on its own or on a larger machine") from None
    orientation = _orientation(image)  # before _upright turns it
    image, exif = _upright(image)
    metadata = {"icc_profile": image.info.get("icc_profile"), "exif": exif}
    metadata = {key: value for key, value in metadata.items() if value}
    if sixteen_bit_colour:
        return Picture(_read_16_bit_png(path, orientation), metadata, frames)
    return Picture(image, metadata, frames)


def _read_16_bit_png(path: Path, orientation: Optional[int]) -> np.ndarray:
    """The PNG's 16-bit colour as a uint16 (H, W, C) array, turned upright as ``orientation`` (EXIF) says."""
    import png

    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        pixels = np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, info["planes"])
    except (png.Error, OSError, ValueError) as error:
        raise BadInputError(f"cannot decode its 16-bit colour ({error})") from None
    return np.ascontiguousarray(_UPRIGHT_ARRAY.get(orientation, lambda a: a)(pixels))


def _upright(image: Image.Image) -> tuple[Image.Image, Optional[bytes]]:
    """``image`` turned as its EXIF orientation says, and its EXIF without the orientation. A damaged EXIF block
    (PIL raises many kinds of errors for those) is dropped, as :func:`read_header` ignores it."""
    try:
        if _orientation(image) not in (None, 1):
            upright = ImageOps.exif_transpose(image)  # a copy: Pillow 9 (A1111's pin) cannot turn in place
            image.close()
            image = upright
        exif = image.getexif()
        exif.pop(_ORIENTATION_TAG, None)
        return image, exif.tobytes() if len(exif) else None
    except Exception:
        return image, None


def save_picture(image: Image.Image | np.ndarray, path: Path, metadata: Optional[dict] = None) -> None:
    """Write ``image`` to ``path`` atomically, with what of ``metadata`` the format can hold. A 16-bit colour
    array stays 16-bit in a PNG; other formats (JPEG, WebP...) take it as 8 bits."""
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise BadInputError(f"{path}: unknown image type {path.suffix!r}; use one of {sorted(IMAGE_SUFFIXES)}")
    if isinstance(image, np.ndarray):
        if image_format == "PNG":
            write_atomically(path, lambda file: file.write(_16_bit_png(image, metadata or {})))
            return
        image = Image.fromarray(np.round(image / 257).astype(np.uint8))
    if image_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha, nor 16 bits
    keep = _METADATA_BY_FORMAT.get(image_format, ())
    options = {key: value for key, value in (metadata or {}).items() if key in keep}
    write_atomically(path, lambda file: image.save(file, format=image_format, **options))


def _16_bit_png(pixels: np.ndarray, metadata: dict) -> bytes:
    """A 16-bit colour PNG of ``pixels`` (H, W, 3 or 4), with the ICC profile and EXIF of ``metadata``."""
    import png

    height, width, planes = pixels.shape
    encoded = io.BytesIO()
    png.Writer(width, height, greyscale=False, alpha=planes == 4, bitdepth=16).write(
        encoded, pixels.reshape(height, width * planes))
    chunks = list(png.Reader(bytes=encoded.getvalue()).chunks())
    extra = []
    if metadata.get("icc_profile"):  # iCCP: a name, compression method 0, the zlib-compressed profile
        extra.append((b"iCCP", b"ICC profile\0\0" + zlib.compress(metadata["icc_profile"])))
    if metadata.get("exif"):
        exif = metadata["exif"]
        extra.append((b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif))
    output = io.BytesIO()
    png.write_chunks(output, chunks[:1] + extra + chunks[1:])  # after IHDR, before the pixels
    return output.getvalue()


def remove_leftovers(path: Path) -> None:
    """Delete the temporary files that writes of ``path`` left behind: a killed process (SIGKILL, power loss)
    cannot clean up after itself. Only for a run that owns ``path`` (a resumed job), never beside a live writer."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*{TEMPORARY_SUFFIX}"):
        leftover.unlink(missing_ok=True)


def write_atomically(path: Path, write) -> None:
    """``write(file)`` into a unique temporary file beside ``path``, synced, then renamed over ``path``.

    On any failure, Ctrl-C included, the temporary file is removed and ``path`` is left as it was.
    """
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}{TEMPORARY_SUFFIX}"
    descriptor = os.open(temporary, _NEW_FILE_FLAGS, 0o666)  # a name taken already raises, never overwrites
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
