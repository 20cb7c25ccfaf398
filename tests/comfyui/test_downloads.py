"""The loader's files that download themselves, against a hub on the loopback (tests/hub_server.py): listed
whether present or not, fetched into ComfyUI's model folders with the node's progress bar, and a message that
says which file goes where when the hub cannot be reached."""
from __future__ import annotations

import pytest

from tests.hub_server import FakeHub, patch_endpoint, patch_offline

DOWNLOAD = " (download if missing)"


@pytest.fixture
def served_weights(tiny_model_file, monkeypatch):
    """A hub serving the tiny model as chunjie-spring/FlowSR's flowsr.safetensors; models/flowsr left empty."""
    content = tiny_model_file.read_bytes()
    tiny_model_file.unlink()
    with FakeHub({"chunjie-spring/FlowSR/flowsr.safetensors": content}) as hub:
        patch_endpoint(monkeypatch, hub.endpoint)
        yield content


def test_both_downloads_are_listed_before_they_are_on_disk(pack, comfy_home):
    host = pack.nodes.host
    assert host.weight_choices()[-1] == "flowsr.safetensors" + DOWNLOAD
    assert host.base_model_choices()[-1] == "v2-1_512-ema-pruned.safetensors" + DOWNLOAD


def test_picking_the_download_fetches_it_into_models_flowsr_with_progress(
        run, served_weights, comfy_home, progress_events, make_image):
    model = run("FlowSRLoader", flowsr_weights="flowsr.safetensors" + DOWNLOAD, base_model="none", dtype="auto")
    assert (comfy_home / "models" / "flowsr" / "flowsr.safetensors").read_bytes() == served_weights
    assert progress_events[-1] == (len(served_weights), len(served_weights))
    upscaled = run("FlowSRUpscale", flowsr_model=model, image=make_image(), scale=2.0, tile_size=-1,
                   tile_overlap=-1, color_fix="wavelet", seed=-1)
    assert upscaled.shape == (1, 48, 40, 3)


def test_offline_the_message_says_which_file_goes_where(run, served_weights, comfy_home, flowsr, monkeypatch):
    patch_offline(monkeypatch)
    with pytest.raises(flowsr.CheckpointError) as caught:
        run("FlowSRLoader", flowsr_weights="flowsr.safetensors" + DOWNLOAD, base_model="none", dtype="auto")
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message and "chunjie-spring/FlowSR/resolve/main/flowsr.safetensors" in message
    assert str(comfy_home / "models" / "flowsr") in message
    assert not (comfy_home / "models" / "flowsr" / "flowsr.safetensors").exists()
