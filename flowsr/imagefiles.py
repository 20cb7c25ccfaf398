"""Image files on disk, for the command line: read upright and bounded, written whole or not at all.

A picture is read with its EXIF orientation applied and its colour profile (and EXIF, less the orientation)
kept for the output. Its size is known from the header before any pixel is decoded, so that a
decompression bomb is refused without being decoded. Outputs are written to a unique temporary file
beside the destination, synced, and renamed over it: a reader, a crash or a second run sees the old file
or the new one, never half of one.
"""
from __future__ import annotations

import glob
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
#: What each output format can carry over from the input.
_METADATA_BY_FORMAT = {"PNG": ("icc_profile", "exif"), "JPEG": ("icc_profile", "exif"),
                       "WEBP": ("icc_profile", "exif"), "TIFF": ("icc_profile",)}
_ORIENTATION_TAG = 0x0112
_SIDEWAYS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
TEMPORARY_SUFFIX = ".flowsr-part"
#: Temporary outputs are created with mode 0o666 and these flags, not by ``tempfile.mkstemp``, which makes them
#: private (0o600): so the kernel gives them what the umask allows, as any new file, and no one reads the umask.
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


@dataclass
class Picture:
    """Decoded, upright pixels and the metadata to write back beside the upscaled ones."""
    image: Image.Image
    metadata: dict


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
        try:
            sideways = image.getexif().get(_ORIENTATION_TAG) in _SIDEWAYS
        except Exception:  # a damaged EXIF block: the image is read without it
            sideways = False
        return (height, width, image.mode) if sideways else (width, height, image.mode)


def read_picture(path: Path) -> Picture:
    """The decoded image, turned upright, with its ICC profile and EXIF (orientation removed)."""
    image = _open(path)
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
    image, exif = _upright(image)
    metadata = {"icc_profile": image.info.get("icc_profile"), "exif": exif}
    return Picture(image, {key: value for key, value in metadata.items() if value})


def _upright(image: Image.Image) -> tuple[Image.Image, Optional[bytes]]:
    """``image`` turned as its EXIF orientation says, and its EXIF without the orientation. A damaged EXIF block
    (PIL raises many kinds of errors for those) is dropped, as :func:`read_header` ignores it."""
    try:
        if image.getexif().get(_ORIENTATION_TAG) not in (None, 1):
            upright = ImageOps.exif_transpose(image)  # a copy: Pillow 9 (A1111's pin) cannot turn in place
            image.close()
            image = upright
        exif = image.getexif()
        exif.pop(_ORIENTATION_TAG, None)
        return image, exif.tobytes() if len(exif) else None
    except Exception:
        return image, None


def save_picture(image: Image.Image, path: Path, metadata: Optional[dict] = None) -> None:
    """Write ``image`` to ``path`` atomically, with what of ``metadata`` the format can hold."""
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise BadInputError(f"{path}: unknown image type {path.suffix!r}; use one of {sorted(IMAGE_SUFFIXES)}")
    if image_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha, nor 16 bits
    keep = _METADATA_BY_FORMAT.get(image_format, ())
    options = {key: value for key, value in (metadata or {}).items() if key in keep}
    write_atomically(path, lambda file: image.save(file, format=image_format, **options))


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
