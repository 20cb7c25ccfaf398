"""Model files that download themselves, against a hub on the loopback (tests/hub_server.py): whole or not at
all, checked against the hub's sha256, resumed after a broken transfer, and a clear word when offline."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from flowsr import downloads
from flowsr.downloads import FLOWSR_WEIGHTS, DownloadError
from tests.hub_server import FakeHub, patch_endpoint, patch_offline

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTENT = bytes(range(256)) * 4096  # 1 MiB, more than one of huggingface_hub's 10 MB chunks would need


def _key(file: downloads.HubFile) -> str:
    return f"{file.repo_id}/{file.filename}"


@pytest.fixture
def hub(monkeypatch):
    with FakeHub({_key(FLOWSR_WEIGHTS): CONTENT}) as server:
        patch_endpoint(monkeypatch, server.endpoint)
        yield server


def _leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not name.endswith(".lock"))


def test_download_is_whole_checked_and_reports_progress(hub, tmp_path):
    reports = []
    path = downloads.download(FLOWSR_WEIGHTS, tmp_path, progress=lambda done, total: reports.append((done, total)))
    assert path == tmp_path / "flowsr.safetensors"
    assert path.read_bytes() == CONTENT
    assert _leftovers(tmp_path) == ["flowsr.safetensors"]
    assert reports[-1] == (len(CONTENT), len(CONTENT))
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_present_file_is_not_downloaded_again(hub, tmp_path):
    downloads.download(FLOWSR_WEIGHTS, tmp_path)
    hub.requests.clear()
    downloads.download(FLOWSR_WEIGHTS, tmp_path)
    assert hub.requests == []


def test_broken_transfer_leaves_a_part_that_the_next_call_continues(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub writes whole chunks (10 MB); smaller ones let a 1 MiB file break off mid-way.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 2 ** 16)
    hub.cut_after = 300_000
    with pytest.raises(DownloadError, match="broke off.*run again"):
        downloads.download(FLOWSR_WEIGHTS, tmp_path)
    assert not (tmp_path / "flowsr.safetensors").exists()
    (part,) = [name for name in _leftovers(tmp_path) if name.endswith(".part")]
    kept = (tmp_path / part).stat().st_size
    assert 0 < kept <= 300_000 and (tmp_path / part).read_bytes() == CONTENT[:kept]

    hub.cut_after, hub.broken = None, False
    hub.requests.clear()
    path = downloads.download(FLOWSR_WEIGHTS, tmp_path)
    assert path.read_bytes() == CONTENT
    assert ("GET", f"/{FLOWSR_WEIGHTS.repo_id}/resolve/main/flowsr.safetensors", f"bytes={kept}-") in hub.requests
    assert _leftovers(tmp_path) == ["flowsr.safetensors"]


def test_corrupted_transfer_is_refused_and_nothing_keeps_the_name(hub, tmp_path):
    hub.served[_key(FLOWSR_WEIGHTS)] = bytes(len(CONTENT))
    with pytest.raises(DownloadError, match="does not match the hub's size and checksum"):
        downloads.download(FLOWSR_WEIGHTS, tmp_path)
    assert _leftovers(tmp_path) == []


def test_offline_says_which_file_goes_where(hub, tmp_path, monkeypatch):
    patch_offline(monkeypatch)
    with pytest.raises(DownloadError) as error:
        downloads.download(FLOWSR_WEIGHTS, tmp_path)
    message = str(error.value)
    assert "HF_HUB_OFFLINE" in message and str(tmp_path) in message
    assert f"{hub.endpoint}/chunjie-spring/FlowSR/resolve/main/flowsr.safetensors" in message
    assert hub.requests == []


def test_unreachable_hub_says_which_file_goes_where(monkeypatch, tmp_path):
    with FakeHub({}) as server:
        endpoint = server.endpoint  # a port that nothing listens on once the server is closed
    patch_endpoint(monkeypatch, endpoint)
    with pytest.raises(DownloadError, match=f"cannot reach the hub.*put it in {tmp_path}"):
        downloads.download(FLOWSR_WEIGHTS, tmp_path)


def test_locate_keeps_paths_and_refuses_a_missing_known_file_without_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOWSR_CACHE", str(tmp_path / "cache"))
    assert downloads.locate("some/other.safetensors", allow_download=False) == "some/other.safetensors"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DownloadError, match="--allow-download.*chunjie-spring/FlowSR"):
        downloads.locate("flowsr.safetensors", allow_download=False)
    (tmp_path / "flowsr.safetensors").write_bytes(b"x")
    assert downloads.locate("flowsr.safetensors", allow_download=False) == "flowsr.safetensors"


def test_cli_downloads_the_named_weights_with_allow_download(tmp_path, tiny_checkpoint):
    """End to end in a fresh process (HF_ENDPOINT read at import, as users set it): a small-model file served
    as flowsr.safetensors is fetched into FLOWSR_CACHE and upscales; without the flag, exit 2 and the advice."""
    image_file = tmp_path / "in.png"
    Image.new("RGB", (12, 10), (200, 120, 40)).save(image_file)
    with FakeHub({_key(FLOWSR_WEIGHTS): Path(tiny_checkpoint).read_bytes()}) as server:
        env = dict(os.environ, HF_ENDPOINT=server.endpoint, HF_HUB_OFFLINE="0", FLOWSR_CACHE=str(tmp_path / "cache"),
                   PYTHONPATH=str(REPO_ROOT))
        command = [sys.executable, "-m", "flowsr", "upscale", str(image_file), "-o", str(tmp_path / "out.png"),
                   "--scale", "2", "--checkpoint", "flowsr.safetensors"]
        refused = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
        assert refused.returncode == 2, refused.stderr
        assert "--allow-download" in refused.stderr and "Traceback" not in refused.stderr
        done = subprocess.run(command + ["--allow-download"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cache" / "flowsr.safetensors").read_bytes() == Path(tiny_checkpoint).read_bytes()
    assert (tmp_path / "out.png").is_file()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
