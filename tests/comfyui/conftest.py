"""Loads the node pack the way ComfyUI does, against small stand-ins for the ComfyUI modules it touches.

The stand-ins (``standins/<dotted module name>.py``, checked against Comfy-Org/ComfyUI a125cd84b054) become
importable under their real names through a meta-path finder, so ``import comfy.model_management`` inside
the pack finds them and nothing else on ``sys.path`` is shadowed. ``load_pack`` imports the repository root
``__init__.py`` like ComfyUI's ``nodes.load_custom_node``: a package named after its folder path.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

STANDINS = Path(__file__).parent / "standins"
REPO_ROOT = Path(__file__).resolve().parents[2]


class StandInFinder(importlib.abc.MetaPathFinder):
    """Finds ``standins/<name>.py`` for a dotted name; names that prefix another stand-in are packages."""

    def __init__(self, folder: Path):
        self.files = {path.stem: path for path in folder.glob("*.py")}
        self.packages = {name.rsplit(".", i)[0] for name in self.files for i in range(1, name.count(".") + 1)}
        self.blocked: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        if name in self.blocked or any(name.startswith(b + ".") for b in self.blocked):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        if name in self.files:
            is_package = name in self.packages
            return importlib.util.spec_from_file_location(
                name, self.files[name], submodule_search_locations=[] if is_package else None)
        if name in self.packages:
            return importlib.machinery.ModuleSpec(name, _EmptyPackage(), is_package=True)
        return None


class _EmptyPackage(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module: ModuleType) -> None:
        module.__path__ = []


FINDER = StandInFinder(STANDINS)
sys.meta_path.insert(0, FINDER)


def _take(prefixes) -> dict[str, ModuleType]:
    """Remove from sys.modules, and return, the modules under these top-level names."""
    return {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] in prefixes}


def load_pack(module_name: str | None = None, v3: bool = True, blocked: tuple[str, ...] = (),
              root: Path = REPO_ROOT) -> ModuleType:
    """Import the pack in ``root`` as ComfyUI does; ``v3=False`` plays an older ComfyUI without ``comfy_api``, and
    ``blocked`` names more modules to hide (all of ComfyUI's: plain Python outside ComfyUI). The stand-ins
    already imported stay as they were for the other tests."""
    module_name = module_name or str(root).replace(".", "_x_")
    _take({module_name})
    FINDER.blocked = set(blocked) | (set() if v3 else {"comfy_api"})
    hidden = _take(FINDER.blocked)
    try:
        spec = importlib.util.spec_from_file_location(module_name, root / "__init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    finally:
        FINDER.blocked = set()
        sys.modules.update(hidden)
    return module


@pytest.fixture(scope="session")
def pack_loader():
    """``load(module_name, v3=True, blocked=())``: import the pack anew, e.g. as an older ComfyUI would."""
    return load_pack


@pytest.fixture(scope="session")
def pack() -> ModuleType:
    """The pack as the newest ComfyUI loads it (V3 ``comfy_entrypoint``)."""
    return load_pack()


@pytest.fixture(scope="session")
def nodes_by_id(pack) -> dict:
    import asyncio

    extension = asyncio.run(pack.comfy_entrypoint())
    return {node.GET_SCHEMA().node_id: node for node in asyncio.run(extension.get_node_list())}


@pytest.fixture
def flowsr(pack):
    """The flowsr package as the pack imports it (its own copy, named after the pack's folder)."""
    return pack.flowsr


@pytest.fixture
def run(nodes_by_id):
    """``run(node_id, **inputs)``: what ComfyUI's executor does for a V3 node; returns the first output."""
    def execute(node_id, **inputs):
        return nodes_by_id[node_id].execute(**inputs).result[0]
    return execute


@pytest.fixture
def comfy_home(tmp_path, pack):
    """A fresh ComfyUI folder layout with the pack's ``flowsr`` model folder registered again."""
    import folder_paths

    folder_paths.reset(str(tmp_path))
    pack.nodes.host.register_model_folder()
    yield tmp_path
    import comfy.model_management as mm

    mm.current_loaded_models.clear()
    mm.load_calls.clear()
    mm.interrupt_current_processing(False)


@pytest.fixture
def tiny_model_file(comfy_home) -> Path:
    """A small random model in our full-model format, in models/flowsr (fast on a CPU)."""
    from flowsr.models.tiny import TinyFlowSR, save_tiny

    torch.manual_seed(0)
    path = comfy_home / "models" / "flowsr" / "tiny.safetensors"
    save_tiny(TinyFlowSR({"latent_factor": 4, "unet": {
        "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D"] * 2,
        "up_block_types": ["UpBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 4}}), path)
    return path


@pytest.fixture
def progress_events():
    """Every call of ComfyUI's progress-bar hook, as (value, total)."""
    import comfy.utils

    events: list[tuple[int, int]] = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: events.append((value, total)))
    yield events
    comfy.utils.set_progress_bar_global_hook(None)


@pytest.fixture
def make_image():
    """``make_image(batch, height, width, channels)``: a ComfyUI IMAGE, (B, H, W, C) float32 in [0, 1] on the CPU."""
    def make(batch: int = 1, height: int = 24, width: int = 20, channels: int = 3, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.rand(batch, channels, max(2, height // 4), max(2, width // 4), generator=generator)
        smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        return smooth.movedim(1, -1).contiguous()
    return make


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def repo_root_module_loader():
    """``load(relative_path)``: a script of the repository imported as a module."""
    return lambda relative: load_module(REPO_ROOT / relative, Path(relative).stem)


@pytest.fixture(scope="session")
def workflow_tools() -> ModuleType:
    """tests/host/comfyui_workflows.py, the checker shared with the real-host driver."""
    return load_module(REPO_ROOT / "tests" / "host" / "comfyui_workflows.py", "comfyui_workflows")


@pytest.fixture(scope="session")
def object_info(nodes_by_id, workflow_tools) -> dict:
    """What ComfyUI's /object_info would say about our nodes (from their V3 schema) and the core nodes used."""
    ours = {node_id: {"input": node.INPUT_TYPES(), "output": [o.io_type for o in node.GET_SCHEMA().outputs],
                      "display_name": node.GET_SCHEMA().display_name}
            for node_id, node in nodes_by_id.items()}
    for (node_id, name), files in workflow_tools.MODEL_FILES.items():  # as a ComfyUI with those files lists them
        if node_id in ours:
            ours[node_id]["input"]["required"][name][1]["options"] = files
    return {**workflow_tools.CORE_NODES, **ours}
