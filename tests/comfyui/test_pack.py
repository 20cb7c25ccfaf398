"""What `comfy node publish` would put in the node archive, computed as comfy-cli computes it: the files git
tracks, less those matching .comfyignore (gitignore patterns), plus the folders ``[tool.comfy] includes`` names.
The archive must hold what ComfyUI needs and nothing of the tests, benchmarks or trainer; the pack must load
and upscale from the archive's files alone."""
import asyncio
import shutil
import subprocess
import tomllib
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.comfyui.conftest import REPO_ROOT, load_pack

LEFT_OUT = ("tests/", "bench/", "train/")
MUST_HAVE = ("__init__.py", "README.md", "LICENSE", "pyproject.toml", "requirements.txt", "install.py",
             "flowsr/weights/flowsr_tiny.safetensors", "flowsr/weights/MODEL_CARD.md",
             "flowsr/models/configs/sd21-base/unet/config.json", "flowsr/models/configs/sd21-base/tokenizer/LICENSE")


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def tracked_files() -> list[str]:
    try:
        listing = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files"], capture_output=True, text=True,
                                 check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: comfy-cli packs the files git tracks")
    return [line for line in listing.splitlines() if line.strip()]


def archive_files() -> list[str]:
    pathspec = pytest.importorskip("pathspec")
    lines = (REPO_ROOT / ".comfyignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    with warnings.catch_warnings():  # comfy-cli's pattern style, deprecated in pathspec 1.x
        warnings.simplefilter("ignore", DeprecationWarning)
        ignored = pathspec.PathSpec.from_lines("gitwildmatch", patterns)
    includes = pyproject()["tool"]["comfy"]["includes"]
    assert includes == [], "includes would add untracked files (and force in ignored ones): compute them here too"
    return [path for path in tracked_files() if not ignored.match_file(path)]


def test_the_archive_holds_what_comfyui_needs_and_no_tests_bench_or_train():
    files = set(archive_files())
    tracked = tracked_files()
    for needed_folder in ("flowsr/", "nodes/", "workflows/"):
        wanted = {path for path in tracked if path.startswith(needed_folder)}
        assert wanted and wanted <= files, sorted(wanted - files)
    assert {"workflows/api/Upscale an image with FlowSR.json", "workflows/Upscale an image with FlowSR.jpg"} <= files
    assert set(MUST_HAVE) <= files, sorted(set(MUST_HAVE) - files)
    assert not [path for path in files if path.startswith(LEFT_OUT)]


def test_the_pack_loads_and_upscales_from_the_archive_alone(tmp_path):
    unpacked = tmp_path / "ComfyUI-FlowSR"
    for path in archive_files():
        (unpacked / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / path, unpacked / path)
    pack = load_pack(root=unpacked)
    assert Path(pack.flowsr.__file__).is_relative_to(unpacked)
    import folder_paths

    folder_paths.reset(str(tmp_path / "comfyui"))
    pack.nodes.host.register_model_folder()
    extension = asyncio.run(pack.comfy_entrypoint())
    nodes = {node.GET_SCHEMA().node_id: node for node in asyncio.run(extension.get_node_list())}
    model = nodes["FlowSRLoader"].execute(flowsr_weights=pack.flowsr.BUILTIN_MODEL_NAME, base_model="none",
                                          dtype="auto").result[0]
    image = torch.rand(1, 12, 10, 3)
    out = nodes["FlowSRUpscale"].execute(flowsr_model=model, image=image, scale=2.0, tile_size=-1, tile_overlap=-1,
                                         color_fix="wavelet", seed=-1).result[0]
    assert out.shape == (1, 24, 20, 3)


def test_registry_metadata_the_publisher_completes():
    project, comfy = pyproject()["project"], pyproject()["tool"]["comfy"]
    assert project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert (REPO_ROOT / "LICENSE").read_text(encoding="utf-8").split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "CC-BY-SA-4.0" in (REPO_ROOT / "flowsr/weights/MODEL_CARD.md").read_text(encoding="utf-8")
    icon_path = comfy["Icon"].split("/main/", 1)[1]  # the Icon URL points at a file of this repository
    assert icon_path in tracked_files()
    with Image.open(REPO_ROOT / icon_path) as icon:
        assert icon.width == icon.height <= 400 and icon.format == "PNG"
