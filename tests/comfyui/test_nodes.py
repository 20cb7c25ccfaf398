"""The nodes run as ComfyUI runs them: execute() with widget values, IMAGE tensors in and out, the memory
manager, the progress bar, the Cancel button, and clear errors for what they cannot take."""
import gc
import weakref

import pytest
import torch


@pytest.fixture
def model(run, tiny_model_file):
    return run("FlowSRLoader", flowsr_weights=tiny_model_file.name, base_model="none", dtype="auto")


UPSCALE_DEFAULTS = dict(scale=2.0, tile_size=-1, tile_overlap=-1, color_fix="wavelet", seed=-1)


def test_upscale_takes_and_gives_comfyui_images(run, model, make_image):
    image = make_image(batch=2, height=24, width=20)
    out = run("FlowSRUpscale", flowsr_model=model, image=image, **UPSCALE_DEFAULTS)
    assert out.shape == (2, 48, 40, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert 0 <= out.min() and out.max() <= 1
    # the wavelet colour fix keeps the input's colours: the low frequencies follow the input
    assert (out.mean(dim=(1, 2)) - image.mean(dim=(1, 2))).abs().max() < 0.05


def test_upscale_is_the_pipeline_result(run, model, make_image):
    """The node only converts layouts: its result is flowsr's on the same pixels."""
    image = make_image(height=16, width=16)
    out = run("FlowSRUpscale", flowsr_model=model, image=image, **{**UPSCALE_DEFAULTS, "color_fix": "none"})
    expected = model.pipeline.upscale_tensor(image.movedim(-1, 1), scale=2.0, color_fix="none")
    torch.testing.assert_close(out, expected.movedim(1, -1))


def test_refine_runs_more_steps_than_upscale(run, model, make_image, progress_events):
    image = make_image(height=16, width=16)
    one = run("FlowSRUpscale", flowsr_model=model, image=image, **UPSCALE_DEFAULTS)
    one_step_calls = progress_events[-1][1]
    progress_events.clear()
    refined = run("FlowSRRefine", flowsr_model=model, image=image, steps=3, schedule="sd3", **UPSCALE_DEFAULTS)
    assert refined.shape == one.shape
    assert progress_events[-1][1] == one_step_calls + 2  # two more velocity calls, one per extra step
    assert not torch.equal(refined, one)


def test_seed_minus_one_is_reproducible_and_a_seed_samples_the_latent(run, model, make_image):
    image = make_image(height=16, width=16)
    first = run("FlowSRUpscale", flowsr_model=model, image=image, **UPSCALE_DEFAULTS)
    assert torch.equal(first, run("FlowSRUpscale", flowsr_model=model, image=image, **UPSCALE_DEFAULTS))
    seeded = [run("FlowSRUpscale", flowsr_model=model, image=image, **{**UPSCALE_DEFAULTS, "seed": 7})
              for _ in range(2)]
    assert torch.equal(*seeded)


def test_loading_the_same_files_again_reuses_the_model(run, tiny_model_file, comfy_home):
    inputs = dict(flowsr_weights=tiny_model_file.name, base_model="none", dtype="fp32")
    first = run("FlowSRLoader", **inputs)
    assert run("FlowSRLoader", **inputs) is first
    assert run("FlowSRLoader", **{**inputs, "dtype": "bf16"}) is not first
    forgotten = weakref.ref(first)
    del first
    gc.collect()
    assert forgotten() is None  # once ComfyUI lets go of it, the pack keeps nothing alive
    replaced = run("FlowSRLoader", **inputs)
    tiny_model_file.write_bytes(tiny_model_file.read_bytes())  # a new file under the same name
    assert run("FlowSRLoader", **inputs) is not replaced


def test_auto_dtype_follows_comfyui_and_the_model_is_managed_by_it(run, tiny_model_file, make_image, pack):
    import comfy.model_management as mm

    model = run("FlowSRLoader", flowsr_weights=tiny_model_file.name, base_model="none", dtype="auto")
    assert model.pipeline.model.dtype == torch.float32  # ComfyUI says: no half precision on the CPU
    assert isinstance(model.patcher.model, pack.nodes.host.FlowSRForModelPatcher)
    assert model.patcher.model.flowsr is model.pipeline.model
    run("FlowSRUpscale", flowsr_model=model, image=make_image(height=16, width=16), **UPSCALE_DEFAULTS)
    call = mm.load_calls[-1]
    assert call["models"] == [model.patcher] and call["force_full_load"] and call["memory_required"] > 0
    assert model.patcher in mm.current_loaded_models
    assert model.patcher.model.device == mm.get_torch_device()
    mm.unload_all_models()  # ComfyUI needs the memory for another model
    assert model.patcher.model.model_loaded_weight_memory == 0
    out = run("FlowSRUpscale", flowsr_model=model, image=make_image(height=16, width=16), **UPSCALE_DEFAULTS)
    assert out.shape == (1, 32, 32, 3) and model.patcher in mm.current_loaded_models


def test_progress_bar_advances_per_tile_to_the_end(run, model, make_image, progress_events):
    run("FlowSRUpscale", flowsr_model=model, image=make_image(height=40, width=40),
        **{**UPSCALE_DEFAULTS, "tile_size": 16, "tile_overlap": 4})
    values = [value for value, _ in progress_events]
    total = progress_events[-1][1]
    assert total > 4  # several tiles
    assert values == list(range(1, total + 1))


def test_cancel_stops_within_one_tile(run, model, make_image):
    import comfy.model_management as mm
    import comfy.utils

    seen = []

    def hook(value, total, preview, node_id=None):  # as ComfyUI's server hook, which checks Cancel too
        seen.append(value)
        if value == 2:
            mm.interrupt_current_processing()  # the user presses Cancel during the second tile

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run("FlowSRUpscale", flowsr_model=model, image=make_image(height=40, width=40),
                **{**UPSCALE_DEFAULTS, "tile_size": 16, "tile_overlap": 4})
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert seen == [1, 2]
    assert not mm.processing_interrupted()  # the flag is consumed, as ComfyUI expects


def test_cancel_is_polled_even_without_a_progress_hook(run, model, make_image):
    import comfy.model_management as mm

    mm.interrupt_current_processing()
    with pytest.raises(mm.InterruptProcessingException):
        run("FlowSRUpscale", flowsr_model=model, image=make_image(height=16, width=16), **UPSCALE_DEFAULTS)


def test_out_of_memory_backs_off_to_smaller_tiles(run, model, make_image, monkeypatch):
    import comfy.model_management as mm

    network = model.pipeline.model.velocity
    sizes = []

    def velocity(x_t, t):
        sizes.append(x_t.shape[-1])
        if x_t.shape[-1] > 16:
            raise mm.OOM_EXCEPTION("CUDA out of memory. Tried to allocate 2.00 GiB")
        return network(x_t, t)

    monkeypatch.setattr(model.pipeline.model, "velocity", velocity)
    out = run("FlowSRUpscale", flowsr_model=model, image=make_image(height=64, width=64),
              **{**UPSCALE_DEFAULTS, "tile_size": 32, "tile_overlap": 8})  # a 32x32 latent: one 32-tile
    assert out.shape == (1, 128, 128, 3)
    assert sizes[0] == 32 and sizes[-1] == 16


def test_out_of_memory_at_the_smallest_tiles_unloads_other_models_and_tries_again(
        run, model, make_image, monkeypatch):
    import comfy.model_management as mm

    network = model.pipeline.model.velocity
    other_models_loaded = [True]
    monkeypatch.setattr(mm, "unload_all_models", lambda: other_models_loaded.clear())

    def velocity(x_t, t):
        if other_models_loaded:
            raise mm.OOM_EXCEPTION("CUDA out of memory")
        return network(x_t, t)

    monkeypatch.setattr(model.pipeline.model, "velocity", velocity)
    out = run("FlowSRUpscale", flowsr_model=model, image=make_image(height=32, width=32), **UPSCALE_DEFAULTS)
    assert out.shape == (1, 64, 64, 3) and not other_models_loaded


def test_out_of_memory_even_then_goes_to_comfyuis_out_of_memory_handling(run, model, make_image, monkeypatch):
    import comfy.model_management as mm

    def velocity(x_t, t):
        raise mm.OOM_EXCEPTION("CUDA out of memory")

    monkeypatch.setattr(model.pipeline.model, "velocity", velocity)
    # ComfyUI tells the user they ran out of GPU memory and unloads every model for this exception type
    with pytest.raises(mm.OOM_EXCEPTION, match="out of memory even with the smallest tiles"):
        run("FlowSRUpscale", flowsr_model=model, image=make_image(height=32, width=32), **UPSCALE_DEFAULTS)


@pytest.mark.parametrize("image, message", [
    (torch.rand(1, 16, 16, 4), "alpha channel.*Split Image with Alpha"),
    (torch.rand(1, 16, 16), "MASK, not an IMAGE.*Convert Mask to Image"),
    (torch.rand(1, 16, 16, 1), "1 channel.*Convert Mask to Image"),
    ([torch.rand(1, 16, 16, 3), torch.rand(1, 20, 16, 3)], "mixes sizes \\(16x16, 16x20\\).*separately"),
    (torch.rand(0, 16, 16, 3), "empty"),
    ("example.png", "expected an IMAGE tensor"),
])
def test_images_it_cannot_take_get_a_message_that_says_what_to_do(run, model, image, message, flowsr):
    with pytest.raises(flowsr.BadInputError, match=message):
        run("FlowSRUpscale", flowsr_model=model, image=image, **UPSCALE_DEFAULTS)


def test_a_list_of_same_size_images_is_one_batch(run, model, make_image):
    images = [make_image(height=16, width=16, seed=1), make_image(height=16, width=16, seed=2)]
    assert run("FlowSRUpscale", flowsr_model=model, image=images, **UPSCALE_DEFAULTS).shape == (2, 32, 32, 3)


@pytest.mark.parametrize("options, message", [
    (dict(scale=0.0), "scale must be between 1 and 8, got 0"),
    (dict(tile_size=8), "tile size must be 0 \\(off\\) or at least 16"),
])
def test_options_it_cannot_take_get_a_clear_error(run, model, make_image, options, message, flowsr):
    with pytest.raises(flowsr.BadInputError, match=message):
        run("FlowSRUpscale", flowsr_model=model, image=make_image(), **{**UPSCALE_DEFAULTS, **options})


def test_a_wrong_value_is_refused_before_comfyui_loads_the_model(run, model, make_image, flowsr):
    import comfy.model_management as mm

    calls_before = len(mm.load_calls)
    with pytest.raises(flowsr.BadInputError, match="tile overlap must be between 0 and 512, got -5"):
        run("FlowSRUpscale", flowsr_model=model, image=make_image(), **{**UPSCALE_DEFAULTS, "tile_overlap": -5})
    with pytest.raises(flowsr.BadInputError, match="steps must be between 1 and 50, got 51"):
        run("FlowSRRefine", flowsr_model=model, image=make_image(), steps=51, schedule="uniform", **UPSCALE_DEFAULTS)
    assert len(mm.load_calls) == calls_before


def test_every_number_widget_spans_exactly_what_flowsr_takes(nodes_by_id, pack):
    """Widget limits come from flowsr/options.py: ComfyUI refuses what is outside them before the node runs,
    and the node's own check takes everything inside (-1 meaning automatic)."""
    from_widgets = pack.nodes.host.from_widgets
    check = pack.flowsr.options.check_upscale_options
    for node_id in ("FlowSRUpscale", "FlowSRRefine"):
        for name, (kind, spec) in nodes_by_id[node_id].INPUT_TYPES()["required"].items():
            if kind not in ("INT", "FLOAT"):
                continue
            check(from_widgets(**{name: spec["min"]}))
            check(from_widgets(**{name: spec["max"]}))
            check(from_widgets(**{name: spec["default"]}))
            for outside in (spec["min"] - 1, spec["max"] + 1):
                with pytest.raises(pack.flowsr.BadInputError, match=name.replace("_", " ")):
                    check(from_widgets(**{name: outside}))


def test_upscale_needs_the_loaders_output(run, make_image, flowsr):
    with pytest.raises(flowsr.BadInputError, match="Load FlowSR Model"):
        run("FlowSRUpscale", flowsr_model="model.safetensors", image=make_image(), **UPSCALE_DEFAULTS)


def test_a_file_that_is_not_flowsr_weights_gets_a_message_saying_where_files_go(run, comfy_home, flowsr):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(comfy_home / "models" / "flowsr" / "upscaler.safetensors"))
    (comfy_home / "models" / "flowsr" / "broken.safetensors").write_bytes(b"not a safetensors file")
    for name in ("upscaler.safetensors", "broken.safetensors"):
        with pytest.raises(flowsr.CheckpointError) as caught:
            run("FlowSRLoader", flowsr_weights=name, base_model="none", dtype="auto")
        assert name in str(caught.value) and "In ComfyUI: flowsr.safetensors goes in" in str(caught.value)


def test_a_file_removed_since_the_list_was_shown_is_a_clear_error(run, flowsr, comfy_home):
    with pytest.raises(flowsr.CheckpointError, match="'gone.safetensors' is not in models/flowsr.*Refresh"):
        run("FlowSRLoader", flowsr_weights="gone.safetensors", base_model="none", dtype="auto")


def test_the_published_format_loads_on_an_sd_base_model_from_models_diffusers(
        run, comfy_home, flowsr_lora_file, tiny_sd_folder, make_image, flowsr):
    (comfy_home / "models" / "flowsr" / "flowsr.safetensors").symlink_to(flowsr_lora_file)
    (comfy_home / "models" / "diffusers").mkdir()
    (comfy_home / "models" / "diffusers" / "sd21-base").symlink_to(tiny_sd_folder)
    with pytest.raises(flowsr.CheckpointError, match="base model"):  # the LoRA alone is not a model
        run("FlowSRLoader", flowsr_weights="flowsr.safetensors", base_model="none", dtype="auto")
    model = run("FlowSRLoader", flowsr_weights="flowsr.safetensors", base_model="[diffusers] sd21-base",
                dtype="fp32")
    assert "flowsr.safetensors on [diffusers] sd21-base" in repr(model)
    out = run("FlowSRUpscale", flowsr_model=model, image=make_image(height=16, width=16), **UPSCALE_DEFAULTS)
    assert out.shape == (1, 32, 32, 3) and torch.isfinite(out).all()


def test_v1_nodes_give_the_same_result(pack_loader, run, model, make_image, tiny_model_file):
    v1 = pack_loader("flowsr_pack_v1_run", v3=False).NODE_CLASS_MAPPINGS

    def call(node_id, **inputs):  # what ComfyUI does with a V1 node
        node = v1[node_id]()
        return getattr(node, node.FUNCTION)(**inputs)[0]

    v1_model = call("FlowSRLoader", flowsr_weights=tiny_model_file.name, base_model="none", dtype="auto")
    image = make_image(height=16, width=16)
    torch.testing.assert_close(call("FlowSRUpscale", flowsr_model=v1_model, image=image, **UPSCALE_DEFAULTS),
                               run("FlowSRUpscale", flowsr_model=model, image=image, **UPSCALE_DEFAULTS))


def test_a_base_model_from_models_checkpoints_reaches_flowsr_as_that_file(
        run, comfy_home, tiny_model_file, monkeypatch, pack):
    import folder_paths

    shared = comfy_home / "shared_checkpoints"  # a checkpoints path added by extra_model_paths.yaml
    shared.mkdir()
    (shared / "v2-1_512-ema-pruned.safetensors").write_bytes(b"")
    folder_paths.add_model_folder_path("checkpoints", str(shared))
    pipeline = pack.flowsr.FlowSRPipeline.from_pretrained(str(tiny_model_file), device="cpu")
    calls = []

    def from_pretrained(checkpoint=None, base_model=None, **options):
        calls.append((checkpoint, base_model, options))
        return pipeline

    monkeypatch.setattr(pack.flowsr.FlowSRPipeline, "from_pretrained", from_pretrained)
    model = run("FlowSRLoader", flowsr_weights=tiny_model_file.name, base_model="v2-1_512-ema-pruned.safetensors",
                dtype="bf16")  # fp16 is refused on a CPU-only ComfyUI (flowsr.devices.resolve_dtype)
    assert calls == [(str(tiny_model_file), str(shared / "v2-1_512-ema-pruned.safetensors"),
                      {"device": torch.device("cpu"), "dtype": torch.bfloat16})]
    assert model.pipeline is pipeline


def test_the_loaders_compile_input_compiles_the_network_blocks(run, tiny_model_file, nodes_by_id):
    plain = run("FlowSRLoader", flowsr_weights=tiny_model_file.name, base_model="none", dtype="fp32")
    compiled = run("FlowSRLoader", flowsr_weights=tiny_model_file.name, base_model="none", dtype="fp32", compile=True)
    assert compiled is not plain
    blocks = [m for m in compiled.pipeline.model.denoiser.modules() if type(m).__name__ == "ResnetBlock2D"]
    assert blocks and all(block._compiled_call_impl is not None for block in blocks)
    assert all(m._compiled_call_impl is None for m in plain.pipeline.model.modules())
    schema = nodes_by_id["FlowSRLoader"].define_schema()
    assert [i.id for i in schema.inputs][-1] == "compile", "new inputs go last: saved workflows keep their values"
