"""How ComfyUI finds the pack: V3 extension or V1 mappings, the node schema, and the models/flowsr folder."""
import asyncio
import os


NODE_IDS = ["FlowSRLoader", "FlowSRUpscale", "FlowSRRefine", "FlowSRApply", "FlowSRUpscaleModel"]


def test_newer_comfyui_gets_only_the_v3_extension(pack, nodes_by_id):
    # ComfyUI reads NODE_CLASS_MAPPINGS first when it exists, which would hide the V3 extension.
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")
    assert list(nodes_by_id) == NODE_IDS
    from comfy_api.latest import io

    assert all(issubclass(node, io.ComfyNode) for node in nodes_by_id.values())


def test_every_node_is_in_image_upscaling_with_a_tooltip_on_every_input(nodes_by_id):
    for node in nodes_by_id.values():
        schema = node.GET_SCHEMA()
        assert schema.category == "image/upscaling"
        assert schema.display_name and schema.description
        for item in schema.inputs + schema.outputs:
            assert item.tooltip and len(item.tooltip) > 15, (schema.node_id, item)


def test_sockets_join_loader_to_upscalers(nodes_by_id):
    loader_output = nodes_by_id["FlowSRLoader"].GET_SCHEMA().outputs[0].io_type
    for node_id in ("FlowSRUpscale", "FlowSRRefine"):
        inputs = nodes_by_id[node_id].INPUT_TYPES()["required"]
        assert inputs["flowsr_model"][0] == loader_output == "FLOWSR_MODEL"
        assert inputs["image"][0] == "IMAGE"
        assert nodes_by_id[node_id].GET_SCHEMA().outputs[0].io_type == "IMAGE"
        # scale 0 never reaches the node: ComfyUI validates against the minimum first
        assert inputs["scale"][1]["min"] == 1.0
        # no randomize widget on the seed: -1 (the latent mean) is the reproducible default
        assert inputs["seed"][1] == {**inputs["seed"][1], "default": -1, "control_after_generate": False}


def test_native_nodes_join_comfyui_sockets_and_keep_the_upscale_widgets(nodes_by_id):
    apply = nodes_by_id["FlowSRApply"]
    assert {name: spec[0] for name, spec in apply.INPUT_TYPES()["required"].items() if name != "flowsr_weights"} == \
        {"model": "MODEL", "strength": "FLOAT"}
    assert apply.INPUT_TYPES()["required"]["strength"][1]["default"] == 1.0
    assert apply.GET_SCHEMA().outputs[0].io_type == "MODEL"
    native = nodes_by_id["FlowSRUpscaleModel"].INPUT_TYPES()["required"]
    one_step = nodes_by_id["FlowSRUpscale"].INPUT_TYPES()["required"]
    assert [native[name][0] for name in ("model", "vae", "conditioning", "image")] == \
        ["MODEL", "VAE", "CONDITIONING", "IMAGE"]
    assert {name: native[name] for name in one_step if name != "flowsr_model"} == \
        {name: spec for name, spec in one_step.items() if name != "flowsr_model"}
    assert nodes_by_id["FlowSRUpscaleModel"].GET_SCHEMA().outputs[0].io_type == "IMAGE"


def test_apply_offers_the_loaders_files_but_not_the_built_in_model(comfy_home, pack, tiny_model_file):
    host, native = pack.nodes.host, pack.nodes.native
    builtin = pack.flowsr.BUILTIN_MODEL_NAME
    assert builtin in host.weight_choices() and tiny_model_file.name in native.weight_choices()
    assert native.weight_choices() == [name for name in host.weight_choices() if name != builtin]


def test_refine_adds_steps_and_schedule_to_upscale(nodes_by_id):
    upscale = list(nodes_by_id["FlowSRUpscale"].INPUT_TYPES()["required"])
    refine = list(nodes_by_id["FlowSRRefine"].INPUT_TYPES()["required"])
    assert [name for name in refine if name not in upscale] == ["steps", "schedule"]
    assert nodes_by_id["FlowSRRefine"].INPUT_TYPES()["required"]["schedule"][1]["options"] == ["uniform", "sd3"]


def _v1_view(v3_inputs: dict) -> dict:
    """V3's ('COMBO', {'options': [...]}) is spelled ([...], {...}) in V1."""
    view = {}
    for name, (kind, options) in v3_inputs["required"].items():
        options = {k: v for k, v in options.items() if k != "multiselect"}
        view[name] = (options.pop("options"), options) if kind == "COMBO" else (kind, options)
    return view


def test_older_comfyui_gets_the_same_nodes_through_node_class_mappings(nodes_by_id, pack_loader):
    v1 = pack_loader("flowsr_pack_v1", v3=False)
    assert not hasattr(v1, "comfy_entrypoint")
    assert list(v1.NODE_CLASS_MAPPINGS) == NODE_IDS
    assert v1.NODE_DISPLAY_NAME_MAPPINGS["FlowSRUpscale"] == "FlowSR Upscale (one step)"
    for node_id, v1_node in v1.NODE_CLASS_MAPPINGS.items():
        v3_node = nodes_by_id[node_id]
        assert v1_node.INPUT_TYPES()["required"] == _v1_view(v3_node.INPUT_TYPES())
        assert v1_node.CATEGORY == "image/upscaling"
        assert v1_node.RETURN_TYPES == tuple(o.io_type for o in v3_node.GET_SCHEMA().outputs)


def test_the_v1_nodes_run_as_older_comfyui_calls_them_and_give_the_v3_result(nodes_by_id, pack_loader,
                                                                           tiny_model_file, make_image):
    import torch

    v1_nodes = pack_loader("flowsr_pack_v1_run", v3=False).NODE_CLASS_MAPPINGS

    def run_v1(node_id: str, **inputs):  # ComfyUI's V1 executor: getattr(node(), FUNCTION)(**inputs) -> tuple
        node = v1_nodes[node_id]
        return getattr(node(), node.FUNCTION)(**inputs)

    def run_v3(node_id: str, **inputs):
        return (nodes_by_id[node_id].execute(**inputs).result[0],)

    image = make_image(height=12, width=16)
    options = dict(scale=2.0, steps=2, schedule="sd3", tile_size=-1, tile_overlap=-1, color_fix="wavelet", seed=3)
    outputs = []
    for run in (run_v1, run_v3):
        (model,) = run("FlowSRLoader", flowsr_weights=tiny_model_file.name, base_model="none", dtype="fp32")
        (upscaled,) = run("FlowSRRefine", flowsr_model=model, image=image, **options)
        outputs.append(upscaled)
    assert outputs[0].shape == (1, 24, 32, 3)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_outside_comfyui_the_package_registers_nothing(pack_loader):
    # pytest imports the repository root's __init__.py when it collects; that must not need ComfyUI.
    module = pack_loader("flowsr_pack_elsewhere", blocked=("folder_paths", "comfy", "comfy_api"))
    assert not hasattr(module, "NODE_CLASS_MAPPINGS") and not hasattr(module, "comfy_entrypoint")
    assert not hasattr(module, "nodes")  # nothing of the pack was imported


def test_imported_as_a_plain_module_the_package_registers_nothing(pack):
    # pytest does so when the checkout's folder name has a dot in it, with ComfyUI's stand-ins around
    import importlib.util
    from pathlib import Path

    root_init = Path(__file__).resolve().parents[2] / "__init__.py"
    spec = importlib.util.spec_from_file_location("a_b", root_init, submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not hasattr(module, "comfy_entrypoint") and not hasattr(module, "NODE_CLASS_MAPPINGS")


def test_models_flowsr_is_registered_after_extra_model_paths(tmp_path, pack):
    import folder_paths

    folder_paths.reset(str(tmp_path / "ComfyUI"))
    yaml_path = str(tmp_path / "shared" / "flowsr")  # what extra_model_paths.yaml set before custom nodes load
    folder_paths.add_model_folder_path("flowsr", yaml_path, is_default=True)
    pack.nodes.host.register_model_folder()
    paths, extensions = folder_paths.folder_names_and_paths["flowsr"]
    assert paths == [yaml_path, os.path.join(folder_paths.models_dir, "flowsr")]
    assert extensions == {".safetensors"}  # never offer pickled weights
    assert os.path.isdir(os.path.join(folder_paths.models_dir, "flowsr"))
    pack.nodes.host.register_model_folder()  # ComfyUI may import the pack again (e.g. a reload)
    assert folder_paths.get_folder_paths("flowsr") == paths


def test_model_lists_show_what_the_loader_can_load(comfy_home, pack, tiny_model_file):
    host = pack.nodes.host
    models = comfy_home / "models"
    (models / "flowsr" / "old.ckpt").write_bytes(b"pickle")
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / "v2-1_512-ema-pruned.safetensors").write_bytes(b"")
    (models / "checkpoints" / "sd15.ckpt").write_bytes(b"")
    (models / "diffusers" / "sd21" / "nested").mkdir(parents=True)
    (models / "diffusers" / "sd21" / "model_index.json").write_text("{}")
    download = host.DOWNLOAD_SUFFIX  # always listed: a workflow naming one runs whether it is on disk or not
    assert host.weight_choices() == [pack.flowsr.BUILTIN_MODEL_NAME, tiny_model_file.name,
                                     "flowsr.safetensors" + download]
    assert host.base_model_choices() == ["none", "v2-1_512-ema-pruned.safetensors", "[diffusers] sd21",
                                         "v2-1_512-ema-pruned.safetensors" + download]


def test_extension_entrypoint_is_async_like_comfyui_awaits_it(pack):
    assert asyncio.iscoroutinefunction(pack.comfy_entrypoint)
