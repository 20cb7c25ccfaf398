"""Model files that arrive by themselves: the public FlowSR weights and SD 2.1-base's single file, fetched from
the Hugging Face hub into a folder, checked against the size and sha256 the hub reports, and given their name
only once whole.

huggingface_hub does the talking: its metadata call (size, sha256, where the bytes are) and its ``http_get``
(retries, Range requests, the progress bar). The partial file and the rename are ours, for one reason each:
``hf_hub_download`` deletes its partial file when a transfer fails, so a broken download of the 5 GB base model
would start again from zero; and it names the file before checking more than its size.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import CheckpointError
from .families import SD21_BASE

logger = logging.getLogger(__name__)

#: ``progress(bytes_done, bytes_total)`` while a file downloads.
DownloadProgress = Callable[[int, int], None]
#: Where the command line keeps downloaded model files, unless ``FLOWSR_CACHE`` names another folder.
CACHE_ENVIRONMENT_VARIABLE = "FLOWSR_CACHE"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")
_HASH_CHUNK = 2 ** 24


class DownloadError(CheckpointError):
    """A model file that could not be downloaded or did not check out; the message says how to get it by hand."""


@dataclass(frozen=True)
class HubFile:
    """A model file users name by its file name, and where on the hub it lives."""
    repo_id: str
    filename: str
    what: str
    revision: str = "main"

    @property
    def url(self) -> str:
        """Its download address (the configured endpoint's), for messages and downloads by hand."""
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, self.filename, revision=self.revision)

    def by_hand(self, folder: Path) -> str:
        """How to put the file in place without this module, for messages."""
        return f"download {self.url} and put it in {folder} (as {self.filename})"


FLOWSR_WEIGHTS = HubFile("chunjie-spring/FlowSR", "flowsr.safetensors", "the public FlowSR weights")
SD21_BASE_FILE = HubFile(SD21_BASE.single_file_repo, SD21_BASE.single_file, f"{SD21_BASE.full_name}'s single file")
KNOWN_FILES = (FLOWSR_WEIGHTS, SD21_BASE_FILE)


def known_file(name: str | os.PathLike) -> Optional[HubFile]:
    """The downloadable file a bare file name (no folder) stands for, or None."""
    name = os.fspath(name)
    return next((file for file in KNOWN_FILES if name == file.filename), None)


def cache_folder() -> Path:
    """The command line's folder for downloaded model files: ``$FLOWSR_CACHE``, else the user's cache."""
    configured = os.environ.get(CACHE_ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "flowsr"


def locate(name: str | os.PathLike, allow_download: bool) -> str | os.PathLike:
    """``name`` itself when it is a path that exists or no known file; else the known file in
    :func:`cache_folder`, downloaded there first when allowed (a missing one is a :class:`DownloadError`)."""
    file = known_file(name)
    if file is None or Path(name).exists():
        return name
    folder = cache_folder()
    if (folder / file.filename).is_file():
        return folder / file.filename
    if not allow_download:
        raise DownloadError(f"{file.filename} ({file.what}) is neither here nor in {folder}: allow downloads "
                            f"(--allow-download) to fetch it from the hub repository {file.repo_id}, or "
                            f"{file.by_hand(folder)}, or pass the path of your copy")
    return download(file, folder)


def download(file: HubFile, folder: str | os.PathLike, progress: Optional[DownloadProgress] = None) -> Path:
    """``folder/file.filename``, downloaded first if it is not there. Resumable: an interrupted download
    leaves a hidden partial file that the next call continues. One download at a time per file (a lock)."""
    from filelock import FileLock

    folder = Path(folder)
    target = folder / file.filename
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"cannot create {folder} for {file.filename} ({error.strerror or error})") from None
    with FileLock(str(folder / f".{file.filename}.lock")):
        if not target.is_file():  # another process may have finished it while this one waited
            _download_locked(file, folder, progress)
    return target


def _download_locked(file: HubFile, folder: Path, progress: Optional[DownloadProgress]) -> None:
    size, etag, location = _metadata(file, folder)
    partial = folder / f".{file.filename}.{etag[:16]}.part"
    logger.info("FlowSR: downloading %s (%s, %.2f GB) into %s", file.filename, file.repo_id, size / 1e9, folder)
    _fetch(location, partial, size, file, folder, progress)
    if not _matches(partial, size, etag):
        partial.unlink(missing_ok=True)
        raise DownloadError(f"the download of {file.filename} does not match the hub's size and checksum (the "
                            f"bytes were damaged on the way, or the server sent another file); it was deleted. "
                            f"Try again, or {file.by_hand(folder)}")
    os.replace(partial, folder / file.filename)


def _metadata(file: HubFile, folder: Path) -> tuple[int, str, str]:
    """The file's size, its etag (the sha256 of an LFS file) and the address of its bytes, from the hub."""
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        metadata = get_hf_file_metadata(file.url)
    except OfflineModeIsEnabled:
        raise DownloadError(f"{file.filename} ({file.what}) is not in {folder} and downloads are off "
                            f"(HF_HUB_OFFLINE is set): {file.by_hand(folder)}") from None
    except Exception as error:  # no network, an unknown repository, a server error: the same advice
        raise DownloadError(f"cannot reach the hub for {file.filename} ({type(error).__name__}: "
                            f"{_first_line(error)}); "
                            f"check the network, or {file.by_hand(folder)}") from None
    if metadata.size is None or not metadata.etag:
        raise DownloadError(f"the hub gave no size or checksum for {file.filename}, so a download could not be "
                            f"checked: {file.by_hand(folder)}")
    return metadata.size, metadata.etag, metadata.location


def _fetch(location: str, partial: Path, size: int, file: HubFile, folder: Path,
           progress: Optional[DownloadProgress]) -> None:
    """The bytes into ``partial``, continuing what a previous attempt left there."""
    from huggingface_hub.file_download import http_get

    done = partial.stat().st_size if partial.is_file() else 0
    if done > size:  # not a prefix of this file: start over
        partial.unlink()
        done = 0
    # Mode 0o666 less the umask, as any new file: readable by a host running as another user.
    descriptor = os.open(partial, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    with os.fdopen(descriptor, "r+b") as out:
        out.seek(done)
        try:
            http_get(location, out if progress is None else _ReportingFile(out, size, progress), resume_size=done,
                     expected_size=size, displayed_filename=file.filename)
        except OSError as error:  # the connection broke for good (huggingface_hub retried); the part stays
            raise DownloadError(f"the download of {file.filename} broke off ({_first_line(error)}); run again to continue "
                                f"it, or {file.by_hand(folder)}") from None
        out.flush()
        os.fsync(out.fileno())


def _matches(path: Path, size: int, etag: str) -> bool:
    """Size and content agree with the hub: sha256 for LFS files, the git blob hash for small ones."""
    if path.stat().st_size != size:
        return False
    if _SHA256.fullmatch(etag):
        digest = hashlib.sha256()
    elif _GIT_SHA1.fullmatch(etag):
        digest = hashlib.sha1(b"blob %d\0" % size)
    else:
        logger.warning("FlowSR: the hub's etag of %s is no checksum; only its size was checked", path.name)
        return True
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest() == etag


def _first_line(error: Exception) -> str:
    """huggingface_hub's errors add lines of links; a message keeps the first."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class _ReportingFile:
    """The partial file, reporting its size to ``progress`` as huggingface_hub writes to it. (Its progress-bar
    hook, ``tqdm_class``, exists only in its newer releases; A1111's pin, 0.25, has none.)"""

    def __init__(self, file, total: int, progress: DownloadProgress):
        self.file, self.total, self.progress = file, total, progress

    def write(self, data: bytes) -> int:
        written = self.file.write(data)
        self.progress(self.file.tell(), self.total)
        return written

    def __getattr__(self, name: str):
        return getattr(self.file, name)
