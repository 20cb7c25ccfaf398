"""Every workflow in workflows/ uses only node types and inputs that exist, with links of matching types,
comes with a JPEG thumbnail for ComfyUI's template browser, and has an API-format twin in workflows/api/."""
import json
from pathlib import Path

import pytest
from PIL import Image

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))


def test_there_are_at_least_three_workflows():
    assert len(UI_FILES) >= 3


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_is_valid(path, workflow_tools, object_info):
    workflow = json.loads(path.read_text())
    assert workflow_tools.check_ui_workflow(workflow, object_info) == []
    assert {n["type"] for n in workflow["nodes"]} & {"FlowSRUpscale", "FlowSRRefine", "FlowSRUpscaleModel"}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_thumbnail_is_a_jpeg_beside_the_workflow(path):
    # ComfyUI's frontend shows a custom node's template <name>.json with the picture <name>.jpg.
    with Image.open(path.with_suffix(".jpg")) as thumbnail:
        assert thumbnail.format == "JPEG"
        assert min(thumbnail.size) >= 128


def test_comfyui_serves_templates_from_workflows_folder():
    # ComfyUI (app/custom_node_manager.py, a125cd84b054) lists */<folder>/*.json for each of these names but
    # serves /api/workflow_templates/<pack>/ from the first that exists in the pack: an examples/ folder
    # beside workflows/ hid every thumbnail (404 in the template browser).
    served_from = ["example_workflows", "example", "examples", "workflow", "workflows"]
    pack = WORKFLOWS.parent
    assert next(name for name in served_from if (pack / name).is_dir()) == "workflows"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_api_twin_is_what_the_frontend_would_queue(path, workflow_tools, object_info):
    prompt = json.loads((WORKFLOWS / "api" / path.name).read_text())
    assert prompt == workflow_tools.ui_to_api(json.loads(path.read_text()), object_info)
    assert workflow_tools.check_api_prompt(prompt, object_info) == []


def test_the_checker_catches_what_comfyui_would_refuse(workflow_tools, object_info):
    workflow = json.loads(UI_FILES[0].read_text())
    upscale = next(n for n in workflow["nodes"] if n["type"] == "FlowSRUpscale")
    upscale["widgets_values"][0] = 0.0                  # scale 0
    upscale["inputs"][1]["type"] = "MASK"               # a mask into the image socket
    workflow["nodes"].append({"id": 99, "type": "NoSuchNode", "inputs": [], "outputs": []})
    problems = "\n".join(workflow_tools.check_ui_workflow(workflow, object_info))
    assert "scale: 0.0 is below the minimum 1.0" in problems
    assert "input 'image' is IMAGE, not MASK" in problems
    assert "NoSuchNode): no such node type" in problems
    prompt = workflow_tools.ui_to_api(json.loads(UI_FILES[0].read_text()), object_info)
    loader_id = next(k for k, v in prompt.items() if v["class_type"] == "FlowSRLoader")
    prompt[loader_id]["inputs"]["dtype"] = "fp64"
    del prompt[next(k for k, v in prompt.items() if v["class_type"] == "FlowSRUpscale")]["inputs"]["image"]
    problems = "\n".join(workflow_tools.check_api_prompt(prompt, object_info))
    assert "'fp64' is not one of" in problems and "required input 'image' is missing" in problems


def test_the_real_host_driver_knows_what_size_each_workflow_saves(repo_root_module_loader):
    driver = repo_root_module_loader("tests/host/comfyui_driver.py")
    saved = {path.stem: driver.expected_sizes(json.loads((WORKFLOWS / "api" / path.name).read_text()), (100, 80))
             for path in UI_FILES}
    assert saved["Upscale an image with FlowSR"]["4"] == (400, 320)
    assert saved["Upscale a large image in tiles with FlowSR"]["4"] == (200, 160)
    assert saved["Compare FlowSR one step with several Refine steps"]["6"] == (400, 2 * 320 + 8)  # 8 px apart
    assert saved["Upscale with your SD 2.1 checkpoint and FlowSR (Load Checkpoint, Apply FlowSR)"]["6"] == (400, 320)


def test_the_drivers_wrong_file_is_safetensors_without_flowsr_weights(repo_root_module_loader, tmp_path, pack):
    driver = repo_root_module_loader("tests/host/comfyui_driver.py")
    path = tmp_path / "not_flowsr.safetensors"
    driver.write_foreign_safetensors(path)
    from safetensors.torch import load_file

    assert load_file(str(path))["weight"].tolist() == [0.0, 0.0]
    with pytest.raises(pack.flowsr.CheckpointError, match="not FlowSR weights"):
        pack.flowsr.FlowSRPipeline.from_pretrained(str(path), device="cpu")
