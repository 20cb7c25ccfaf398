"""The A1111 / Forge upscaler against stand-ins of A1111 v1.10.1's modules (see standins/README.md)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import flowsr
from flowsr.pipeline import FlowSRPipeline

REPO = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "standins"

BUILTIN_ENTRY = f"{flowsr.BUILTIN_MODEL_NAME} 4x"


def picture(width: int = 20, height: int = 12) -> Image.Image:
    ramp = torch.linspace(0, 255, width * height * 3).reshape(height, width, 3).to(torch.uint8)
    return Image.fromarray(ramp.numpy(), "RGB")


def a1111_target(image: Image.Image, scale: float) -> tuple[int, int]:
    """The size A1111's Upscaler.upscale() returns: each side times the scale, rounded down to a multiple of 8."""
    return int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)


@pytest.fixture
def record_passes(monkeypatch):
    """Counts FlowSR passes (calls of FlowSRPipeline.upscale) and keeps their options."""
    passes = []
    real_upscale = FlowSRPipeline.upscale

    def upscale(self, image, scale=4.0, **options):
        passes.append(SimpleNamespace(size=image.size, scale=scale, **options))
        return real_upscale(self, image, scale=scale, **options)

    monkeypatch.setattr(FlowSRPipeline, "upscale", upscale)
    return passes


# ------------------------------------------------------------------------------------------ the list


@pytest.mark.parametrize("reforge", [False, True], ids=["a1111", "reforge"])
def test_lists_the_public_weights_at_two_scales_and_the_builtin_model(start_a1111, reforge):
    """Listed once whether the host lists Upscaler's subclasses (A1111) or only its own (reForge), also when the
    list is built again."""
    a1111 = start_a1111(reforge=reforge)
    a1111.modelloader.load_upscalers()
    assert [u.name for u in a1111.shared.sd_upscalers] == list(a1111.upscalers)
    entries = {name: (u.data_path, u.scale) for name, u in a1111.upscalers.items()}
    assert entries == {"FlowSR 4x": (None, 4), "FlowSR 2x": (None, 2), BUILTIN_ENTRY: (a1111.script.BUILTIN, 4)}
    assert (a1111.models / "FlowSR").is_dir(), "the folder for the weights is created, so users see where they go"
    for name, upscaler in a1111.upscalers.items():
        # A1111's Extras sets its "Scale by" slider with this pattern (scripts/postprocessing_upscale.py).
        match = re.search(r"(\d)[xX]|[xX](\d)", name)
        assert int(match.group(1) or match.group(2)) == upscaler.scale


def test_lists_each_weights_file_and_skips_a_base_model_put_beside_them(start_a1111, small_model, tmp_path):
    flowsr_dir = tmp_path / "models" / "FlowSR"
    public = small_model(flowsr_dir / "flowsr.safetensors")
    mine = small_model(tmp_path / "elsewhere" / "mine.safetensors")
    (flowsr_dir / "v2-1_512-ema-pruned.safetensors").write_bytes(b"not read when listing")
    a1111 = start_a1111("--flowsr-models-path", str(mine.parent))
    paths = {name: u.data_path for name, u in a1111.upscalers.items()}
    assert paths == {"FlowSR 4x": str(public), "FlowSR 2x": str(public), "FlowSR mine 4x": str(mine),
                     "FlowSR mine 2x": str(mine), BUILTIN_ENTRY: a1111.script.BUILTIN}


# ------------------------------------------------------------------------------------- one pass


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_one_flowsr_pass_at_the_requested_scale_then_a1111_resizes(start_a1111, builtin_small, record_passes, scale):
    a1111 = start_a1111("--use-cpu", "all", "--no-half")
    image = picture()
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    result = upscaler.scaler.upscale(image, scale, upscaler.data_path)
    assert [(p.size, p.scale) for p in record_passes] == [(image.size, scale)]
    assert result.size == a1111_target(image, scale)
    plain = image.resize(result.size, Image.Resampling.LANCZOS)
    assert result.tobytes() != plain.tobytes(), "the result is FlowSR's, not a plain resize"
    assert a1111.shared.state.sampling_step == a1111.shared.state.sampling_steps > 0


def test_beyond_flowsr_largest_scale_still_one_pass(start_a1111, builtin_small, record_passes):
    """A1111 would call again while the image is below target (the LDSR problem); the rest is its resize."""
    a1111 = start_a1111("--use-cpu", "all")
    image = picture(8, 8)
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    result = upscaler.scaler.upscale(image, 12, upscaler.data_path)
    assert [p.scale for p in record_passes] == [8.0]
    assert result.size == (96, 96)


@pytest.mark.parametrize("tile_size", [0, 16])
def test_console_shows_one_progress_line_per_upscale(start_a1111, builtin_small, capsys, tile_size):
    a1111 = start_a1111("--use-cpu", "all")
    a1111.shared.opts.flowsr_tile_size = tile_size  # 0: 3 network calls; 16: many
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    for _ in range(2):
        upscaler.scaler.upscale(picture(40, 40), 4, upscaler.data_path)
    console = capsys.readouterr().err
    lines = [line for line in console.split("\n") if "FlowSR" in line]
    assert len(lines) == 2, console
    for line in lines:
        frames = line.split("\r")
        assert all(re.search(r"\d+/\d+", frame) for frame in frames if frame), f"a frame without a total: {line!r}"
        assert line.count("100%") == 1 and frames[-1].startswith("FlowSR: 100%"), line


# ------------------------------------------------------------------------------------ interrupt


class InterruptAt:
    """A1111's state where the user presses Interrupt while FlowSR reports network call ``at``."""

    def __init__(self, state, at: int):
        self.state, self.at, self.steps_seen = state, at, []

    def __getattr__(self, name):
        return getattr(self.state, name)

    def __setattr__(self, name, value):
        if name in ("state", "at", "steps_seen"):
            return object.__setattr__(self, name, value)
        setattr(self.state, name, value)
        if name == "sampling_step":
            self.steps_seen.append(value)
            if value == self.at:
                self.state.interrupt()


def test_interrupt_stops_between_tiles_and_returns_a1111s_resize(start_a1111, builtin_small, record_passes, capsys):
    a1111 = start_a1111("--use-cpu", "all")
    a1111.shared.opts.flowsr_tile_size = 16  # many tiles: 40x40 image, 4x, 4-pixel latent = 40x40 latent grid
    state = InterruptAt(a1111.shared.state, at=2)
    a1111.shared.state = state
    image = picture(40, 40)
    gc_before = a1111.devices.torch_gc_calls
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    result = upscaler.scaler.upscale(image, 4, upscaler.data_path)

    assert state.steps_seen == [0, 1, 2], "no network call after the interrupt"  # 0: cleared as FlowSR starts
    assert a1111.shared.state.sampling_steps > 2
    assert len(record_passes) == 1
    assert result.tobytes() == image.resize((160, 160), Image.Resampling.LANCZOS).tobytes()
    assert "interrupted" in capsys.readouterr().out
    assert a1111.devices.torch_gc_calls > gc_before


class ProgressAsA1111Shows:
    """A1111's state, recording what /sdapi/v1/progress would answer each time FlowSR reports a network call."""

    def __init__(self, state):
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "shown", [])

    def __getattr__(self, name):
        return getattr(self.state, name)

    def __setattr__(self, name, value):
        setattr(self.state, name, value)
        if name == "sampling_step":
            self.shown.append(self.progress())

    def progress(self) -> float:
        """modules/api/api.py's progressapi, v1.10.1."""
        state, progress = self.state, 0.01
        progress += state.job_no / state.job_count
        if state.sampling_steps > 0:
            progress += 1 / state.job_count * state.sampling_step / state.sampling_steps
        return min(progress, 1)


@pytest.mark.parametrize("job", ["extras", "Upscale"])
def test_extras_progress_shows_the_end_only_at_the_end(start_a1111, builtin_small, monkeypatch, job):
    """Extras counts its image as done when it starts it (nextjob() first); while FlowSR runs it is not. The job
    is named "extras", then after each postprocessing script while that runs (in real A1111: "Upscale"); the
    steps left by the previous upscale are not shown as this one's."""
    a1111 = start_a1111("--use-cpu", "all")
    from modules import scripts

    monkeypatch.setattr(scripts, "scripts_postproc", SimpleNamespace(scripts=[SimpleNamespace(name="Upscale")]))
    a1111.shared.opts.flowsr_tile_size = 16
    state = a1111.shared.state
    state.begin(job="extras")
    state.job_count, state.job_no = 1, 1  # as run_postprocessing leaves them for its one image
    state.job, state.sampling_steps, state.sampling_step = job, 3, 3  # the script's name; the last upscale's
    a1111.shared.state = shown = ProgressAsA1111Shows(state)
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    upscaler.scaler.upscale(picture(40, 40), 4, upscaler.data_path)
    assert len(shown.shown) > 4 and shown.shown == sorted(shown.shown)
    assert max(shown.shown[:-1]) < 1 and shown.shown[-1] == 1
    assert state.job_no == 1  # Extras' own count, back as it was


def test_skip_also_stops(start_a1111, builtin_small):
    a1111 = start_a1111("--use-cpu", "all")
    a1111.shared.state.skip()
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    assert upscaler.scaler.do_upscale(picture(), upscaler.data_path).size == picture().size


# ------------------------------------------------------------------------------ missing weights


def test_missing_weights_name_the_folder_and_need_no_restart(start_a1111, small_model, record_passes):
    a1111 = start_a1111("--use-cpu", "all")
    upscaler = a1111.upscalers["FlowSR 4x"]
    folder = a1111.models / "FlowSR"
    with pytest.raises(flowsr.CheckpointError) as error:
        upscaler.scaler.upscale(picture(), 4, upscaler.data_path)
    assert str(folder) in str(error.value) and "flowsr.safetensors" in str(error.value)
    assert BUILTIN_ENTRY in str(error.value)

    small_model(folder / "flowsr.safetensors")
    assert upscaler.scaler.upscale(picture(), 2, upscaler.data_path).size == (40, 24)
    assert len(record_passes) == 1


def test_weights_removed_after_start(start_a1111, small_model, tmp_path):
    weights = small_model(tmp_path / "models" / "FlowSR" / "flowsr.safetensors")
    a1111 = start_a1111("--use-cpu", "all")
    weights.unlink()
    upscaler = a1111.upscalers["FlowSR 4x"]
    with pytest.raises(flowsr.CheckpointError, match="are gone"):
        upscaler.scaler.upscale(picture(), 4, upscaler.data_path)


def test_public_weights_without_the_base_model_name_the_stable_diffusion_folder(start_a1111, flowsr_lora_file,
                                                                               tmp_path):
    (tmp_path / "models" / "FlowSR").mkdir(parents=True)
    (tmp_path / "models" / "FlowSR" / "flowsr.safetensors").write_bytes(flowsr_lora_file.read_bytes())
    a1111 = start_a1111("--use-cpu", "all")
    upscaler = a1111.upscalers["FlowSR 4x"]
    with pytest.raises(flowsr.CheckpointError) as error:
        upscaler.scaler.upscale(picture(), 4, upscaler.data_path)
    assert str(a1111.models / "Stable-diffusion") in str(error.value)
    assert "v2-1_512-ema-pruned.safetensors" in str(error.value)

    a1111.shared.opts.flowsr_base_model = "sd21.safetensors"
    with pytest.raises(flowsr.CheckpointError, match="sd21.safetensors"):
        upscaler.scaler.upscale(picture(), 4, upscaler.data_path)


def test_public_weights_on_a_configured_base_model(start_a1111, flowsr_lora_file, tiny_sd_folder, tmp_path,
                                                   record_passes):
    """The whole public path: LoRA file in models/FlowSR, base model from the setting (a diffusers folder)."""
    (tmp_path / "models" / "FlowSR").mkdir(parents=True)
    (tmp_path / "models" / "FlowSR" / "flowsr.safetensors").write_bytes(flowsr_lora_file.read_bytes())
    a1111 = start_a1111("--use-cpu", "all")
    a1111.shared.opts.flowsr_base_model = str(tiny_sd_folder)
    upscaler = a1111.upscalers["FlowSR 2x"]
    image = picture(16, 16)
    result = upscaler.scaler.upscale(image, 2, upscaler.data_path)
    assert result.size == (32, 32) and len(record_passes) == 1
    assert upscaler.scaler.pipeline_key[:2] == (str(tmp_path / "models" / "FlowSR" / "flowsr.safetensors"),
                                                str(tiny_sd_folder))


def test_base_model_found_by_name_in_stable_diffusion_folder(start_a1111, flowsr_lora_file, tmp_path):
    (tmp_path / "models" / "FlowSR").mkdir(parents=True)
    (tmp_path / "models" / "FlowSR" / "flowsr.safetensors").write_bytes(flowsr_lora_file.read_bytes())
    base = tmp_path / "models" / "Stable-diffusion" / "sd2" / "v2-1_512-ema-pruned.safetensors"
    base.parent.mkdir(parents=True)
    base.write_bytes(b"")
    (base.parent / "v1-5-pruned-emaonly.safetensors").write_bytes(b"")
    a1111 = start_a1111()
    assert a1111.upscalers["FlowSR 4x"].scaler.resolve(None) == (
        str(tmp_path / "models" / "FlowSR" / "flowsr.safetensors"), str(base))


# ----------------------------------------------------------------------------------- settings


def test_settings_are_registered_in_the_upscaling_section_even_with_nowebui(start_a1111):
    """Registered at load time, so /sdapi/v1/options can set them in API-only mode too."""
    a1111 = start_a1111("--use-cpu", "all")
    labels = a1111.shared.opts.data_labels
    for key, spec in a1111.script.SETTINGS.items():
        info = labels[key]
        assert (info.default, info.section, info.category_id) == (spec.default, ("upscaling", "Upscaling"),
                                                                 "postprocessing")
        assert info.component is getattr(a1111.gradio, spec.component)
        assert getattr(a1111.shared.opts, key) == spec.default
    assert set(labels["flowsr_color_fix"].component_args["choices"]) == {"wavelet", "adain", "none"}


def test_settings_fall_back_to_their_defaults_where_the_host_lacks_them(start_a1111, builtin_small, record_passes):
    a1111 = start_a1111("--use-cpu", "all")
    a1111.shared.opts = type(a1111.shared.opts)({})  # options of a host that never registered ours
    for key, spec in a1111.script.SETTINGS.items():
        assert a1111.script.setting(key) == (spec.option.from_host(spec.default) if spec.option else spec.default)
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    upscaler.scaler.upscale(picture(), 2, upscaler.data_path)
    (run,) = record_passes
    assert (run.steps, run.schedule, run.color_fix, run.tile_size, run.tile_overlap) == (1, "uniform", "wavelet",
                                                                                       None, None)


def test_changed_settings_reach_flowsr(start_a1111, builtin_small, record_passes):
    a1111 = start_a1111("--use-cpu", "all")
    opts = a1111.shared.opts
    # the web UI saves sliders as floats
    opts.data.update(flowsr_tile_size=32.0, flowsr_tile_overlap=48.0, flowsr_steps=2.0, flowsr_schedule="sd3",
                     flowsr_color_fix="none")
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    upscaler.scaler.upscale(picture(), 2, upscaler.data_path)
    (run,) = record_passes
    assert (run.steps, run.schedule, run.color_fix, run.tile_size, run.tile_overlap) == (2, "sd3", "none", 32, 16)


def test_each_flowsr_setting_takes_exactly_what_its_option_takes(start_a1111, capsys):
    """Sliders span the option's values (automatic as -1); radio buttons list its choices; checkboxes hold true
    or false; anything else set through the host's Options.set is refused with one line naming the setting, the
    value and the range (no traceback), and the old value stays."""
    a1111 = start_a1111()
    opts = a1111.shared.opts
    for key, spec in a1111.script.SETTINGS.items():
        if spec.option is None:
            continue
        args = spec.component_args
        if spec.component == "Checkbox":
            good, bad = [True, False], ["yes", 1]
        else:
            good = args.get("choices") or [args["minimum"], args["maximum"]]
            bad = ["other"] if "choices" in args else [args["minimum"] - 1, args["maximum"] + 1, "4"]
        for value in good:
            opts.set(key, value)
            assert getattr(opts, key) == value, (key, value)
        capsys.readouterr()
        for value in bad:
            opts.set(key, value)
            assert getattr(opts, key) == good[-1], (key, value)
            (line,) = capsys.readouterr().err.splitlines()
            assert f"({key}) must be" in line and f"got {value!r}"[:-1] in line and line.endswith(f"keeps {good[-1]!r}")
    assert a1111.script.SETTINGS["flowsr_tile_size"].component_args["minimum"] == -1, "-1 is automatic"
    assert opts.set("flowsr_tile_size", 0) and a1111.script.setting("flowsr_tile_size") == 0, "0: no tiling"


@pytest.mark.parametrize("value, message", [
    (99, "must be between 1 and 50, got 99"), ("abc", "must be a whole number, got 'abc'"),
    (2.5, "must be a whole number, got 2.5"),
])
def test_a_bad_value_posted_to_the_api_is_refused_naming_the_setting(start_a1111, capsys, value, message):
    a1111 = start_a1111()
    a1111.api.set_config({"flowsr_steps": value, "flowsr_schedule": "sd3"})
    assert a1111.shared.opts.flowsr_steps == 1 and a1111.shared.opts.flowsr_schedule == "sd3"
    err = capsys.readouterr().err
    assert f"Settings > Upscaling > 'FlowSR steps' (flowsr_steps) {message}" in err
    options = a1111.api.get_options()  # still answers every client
    assert (options["flowsr_steps"], options["flowsr_schedule"]) == (1, "sd3")


@pytest.mark.parametrize("key, value, message", [
    ("flowsr_keep_loaded", "maybe", "must be true or false, got 'maybe'"),
    ("flowsr_keep_loaded", 0, "must be true or false, got 0"),
    ("flowsr_base_model", 21, "must be text, got 21"),
    ("flowsr_settings_version", "zzz", "must be a whole number, got 'zzz'"),
    ("flowsr_settings_version", 7, "must be between 1 and 2, got 7"),
])
def test_settings_without_a_flowsr_option_are_checked_too(start_a1111, capsys, key, value, message):
    """The issue's reproduction: these were stored, and GET /sdapi/v1/options then failed for every client."""
    a1111 = start_a1111()
    old = getattr(a1111.shared.opts, key)
    a1111.api.set_config({key: value})
    assert getattr(a1111.shared.opts, key) == old
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{key}) {message}; it keeps {old!r}" in line or f"{key} {message}; it keeps {old!r}" in line
    assert a1111.api.get_options()[key] == old


def test_a_good_value_after_a_refused_one_is_kept(start_a1111):
    a1111 = start_a1111()
    a1111.api.set_config({"flowsr_keep_loaded": False})
    a1111.api.set_config({"flowsr_keep_loaded": "maybe"})
    assert a1111.shared.opts.flowsr_keep_loaded is False
    a1111.api.set_config({"flowsr_keep_loaded": True})
    assert a1111.api.get_options()["flowsr_keep_loaded"] is True


def test_without_the_check_a_wrongly_typed_value_breaks_get_options_for_everyone(start_a1111):
    """Why the settings are checked when set: the host's GET /sdapi/v1/options validates its answer."""
    import pydantic

    a1111 = start_a1111()
    a1111.shared.opts.data["flowsr_steps"] = "abc"
    with pytest.raises(pydantic.ValidationError, match="flowsr_steps"):
        a1111.api.get_options()


@pytest.mark.parametrize("forge", [False, True])
def test_get_options_lists_the_settings_in_a1111_and_forge(start_a1111, forge):
    a1111 = start_a1111(forge=forge)
    options = a1111.api.get_options()
    assert {key: options[key] for key in a1111.script.SETTINGS} == {
        key: spec.default for key, spec in a1111.script.SETTINGS.items()}
    a1111.api.set_config({"flowsr_tile_size": 64.0})  # the web UI sends sliders as floats
    assert a1111.api.get_options()["flowsr_tile_size"] == 64


def test_a_value_set_without_the_check_stops_the_upscale_before_the_model_loads(start_a1111, builtin_small,
                                                                                 monkeypatch):
    """``override_settings`` of an API request are set with run_callbacks=False (modules/processing.py)."""
    loads = []
    monkeypatch.setattr(FlowSRPipeline, "from_pretrained", classmethod(lambda cls, *a, **kw: loads.append(a)))
    a1111 = start_a1111("--use-cpu", "all")
    a1111.shared.opts.set("flowsr_tile_overlap", 600, is_api=True, run_callbacks=False)
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    with pytest.raises(flowsr.BadInputError, match=r"'FlowSR tile overlap \(latent pixels\)' \(flowsr_tile_overlap\) "
                                                   "must be between 0 and 512, got 600"):
        upscaler.scaler.upscale(picture(), 2, upscaler.data_path)
    assert loads == []


@pytest.mark.parametrize("saved, tile_size, overlap", [
    ({"flowsr_tile_size": 0, "flowsr_tile_overlap": 16}, None, None),  # 0 was automatic; the overlap then unused
    ({"flowsr_tile_size": 32, "flowsr_tile_overlap": 8}, 32, 8),
    ({"flowsr_tile_size": 0, "flowsr_tile_overlap": 16, "flowsr_settings_version": 2}, 0, 16),  # 0: no tiling
])
def test_settings_saved_by_earlier_versions_keep_doing_what_they_did(start_a1111, builtin_small, record_passes,
                                                                     saved, tile_size, overlap):
    a1111 = start_a1111("--use-cpu", "all", saved=saved)
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    upscaler.scaler.upscale(picture(), 2, upscaler.data_path)
    (run,) = record_passes
    assert (run.tile_size, run.tile_overlap) == (tile_size, overlap)


def test_an_unusable_saved_value_is_replaced_by_the_default_at_start(start_a1111, capsys):
    a1111 = start_a1111(saved={"flowsr_steps": "abc", "flowsr_color_fix": "auto", "flowsr_settings_version": 2})
    assert (a1111.shared.opts.flowsr_steps, a1111.shared.opts.flowsr_color_fix) == (1, "wavelet")
    out = capsys.readouterr().out
    assert "(flowsr_steps) must be a whole number, got 'abc'; using the default, 1" in out
    assert "(flowsr_color_fix) must be one of wavelet, adain, none, got 'auto'" in out
    assert a1111.api.get_options()["flowsr_steps"] == 1


def test_saved_values_that_broke_get_options_are_reset_at_start(start_a1111, capsys):
    a1111 = start_a1111(saved={"flowsr_keep_loaded": "maybe", "flowsr_settings_version": "zzz"})
    options = a1111.api.get_options()
    assert (options["flowsr_keep_loaded"], options["flowsr_settings_version"]) == (True, 2)
    out = capsys.readouterr().out
    assert "(flowsr_keep_loaded) must be true or false, got 'maybe'; using the default, True" in out
    assert "flowsr_settings_version must be a whole number, got 'zzz'; using the default, 2" in out


# ------------------------------------------------------------------------- device, precision, memory


@pytest.mark.parametrize("argv, dtype_setting", [(("--use-cpu", "all"), "fp16"), (("--use-cpu", "flowsr"), "bf16")])
def test_fp32_on_the_cpu(start_a1111, builtin_small, monkeypatch, argv, dtype_setting):
    loads = []
    real = FlowSRPipeline.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        loads.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(FlowSRPipeline, "from_pretrained", classmethod(from_pretrained))
    a1111 = start_a1111(*argv)
    a1111.shared.opts.flowsr_dtype = dtype_setting
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    upscaler.scaler.upscale(picture(), 2, upscaler.data_path)
    assert [(str(kw["device"]), kw["dtype"]) for kw in loads] == [("cpu", "fp32")]
    assert upscaler.scaler.pipeline.model.dtype == torch.float32


@pytest.mark.parametrize("argv, dtype_setting, expected", [(("--no-half",), "auto", "fp32"), ((), "auto", "auto"),
                                                           (("--no-half",), "fp16", "fp16")])
def test_no_half_makes_automatic_precision_fp32_on_a_gpu(start_a1111, monkeypatch, argv, dtype_setting, expected):
    a1111 = start_a1111(*argv)
    monkeypatch.setattr(a1111.devices, "get_device_for", lambda task: torch.device("cuda", 0))
    a1111.shared.opts.flowsr_dtype = dtype_setting
    assert a1111.script.device_and_dtype() == (torch.device("cuda", 0), expected)


def test_model_kept_in_ram_between_uses_unless_told_not_to(start_a1111, builtin_small, monkeypatch):
    loads = []
    real = FlowSRPipeline.from_pretrained.__func__
    monkeypatch.setattr(FlowSRPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **kw: loads.append(a) or real(cls, *a, **kw)))
    a1111 = start_a1111("--use-cpu", "all")
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    for _ in range(2):
        upscaler.scaler.upscale(picture(), 2, upscaler.data_path)
    assert len(loads) == 1 and upscaler.scaler.pipeline is not None

    a1111.shared.opts.flowsr_keep_loaded = False
    gc_before = a1111.devices.torch_gc_calls
    upscaler.scaler.upscale(picture(), 2, upscaler.data_path)
    assert len(loads) == 1 and upscaler.scaler.pipeline is None
    assert a1111.devices.torch_gc_calls > gc_before


@pytest.mark.parametrize("location", ["modules_forge.utils", "modules_forge.forge_util", "modules.upscaler"])
def test_forge_is_asked_to_free_its_gpu_memory(start_a1111, monkeypatch, location):
    """Forge's call moved between its versions; A1111 has none of them."""
    a1111 = start_a1111()
    a1111.script.free_host_memory()
    calls = []
    prepare_free_memory = lambda aggressive=False: calls.append(aggressive)  # noqa: E731
    if location == "modules.upscaler":
        monkeypatch.setattr(sys.modules[location], "prepare_free_memory", prepare_free_memory, raising=False)
    else:
        monkeypatch.setitem(sys.modules, "modules_forge", SimpleNamespace(__path__=[]))
        monkeypatch.setitem(sys.modules, location, SimpleNamespace(prepare_free_memory=prepare_free_memory))
    a1111.script.free_host_memory()
    assert calls == [True]


# ------------------------------------------------------------------------------------ loading


def test_flowsr_imports_when_the_host_does_not_put_the_extension_on_sys_path(tmp_path):
    """Load the script from another folder, with only the stand-ins on sys.path (as a host that skips that)."""
    code = f"""
import importlib.util, sys
sys.path[:] = [p for p in sys.path if p not in ('', {str(REPO)!r})]
sys.path.insert(0, {str(STANDINS)!r})
from types import SimpleNamespace
sys.modules["gradio"] = SimpleNamespace(Slider=object, Radio=object, Textbox=object, Checkbox=object)
from modules import modelloader, paths, shared  # A1111 imports modelloader (and so upscaler) first
paths.models_path = shared.models_path = {str(tmp_path)!r}
spec = importlib.util.spec_from_file_location("flowsr_upscaler.py", {str(REPO / "scripts" / "flowsr_upscaler.py")!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(module.flowsr.__file__)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == REPO / "flowsr" / "__init__.py"


def test_the_compile_setting_loads_a_compiled_pipeline_once(start_a1111, builtin_small, monkeypatch):
    loads = []
    real = FlowSRPipeline.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        loads.append(kwargs["compile"])
        return real(cls, *args, **{**kwargs, "compile": False})  # compiling itself: tests/core/test_speed.py

    monkeypatch.setattr(FlowSRPipeline, "from_pretrained", classmethod(from_pretrained))
    a1111 = start_a1111("--use-cpu", "all")
    assert a1111.script.SETTINGS["flowsr_compile"].component == "Checkbox"
    upscaler = a1111.upscalers[BUILTIN_ENTRY]
    upscaler.scaler.upscale(picture(), 2, upscaler.data_path)
    assert a1111.shared.opts.set("flowsr_compile", True)
    upscaler.scaler.upscale(picture(), 2, upscaler.data_path)
    upscaler.scaler.upscale(picture(), 2, upscaler.data_path)
    assert loads == [False, True], "a changed setting loads anew; an unchanged one keeps the pipeline"
