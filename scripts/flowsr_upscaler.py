"""FlowSR in the upscaler lists of AUTOMATIC1111 and Forge: Extras, hires fix, img2img upscaling and the API.

Host glue only: where the weights are, the Upscaling settings, the device, progress and interrupt. The
super-resolution itself is ``flowsr.FlowSRPipeline``.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Optional

EXTENSION_ROOT = str(Path(__file__).resolve().parent.parent)
if EXTENSION_ROOT not in sys.path:
    # A1111 puts an extension's folder on sys.path only while it loads the extension's scripts; this keeps
    # `import flowsr` working for hosts that load the file some other way (appended: it shadows nothing).
    sys.path.append(EXTENSION_ROOT)

import flowsr  # noqa: E402
from flowsr.families import SD21_BASE  # noqa: E402
from flowsr.options import (AUTOMATIC, COLOR_FIX, COMPILE, DTYPE, SCALE, SCHEDULE, STEPS, TILE_OVERLAP,  # noqa: E402
                            TILE_SIZE, Option, problem)
from flowsr.weights_file import FLOWSR_LORA, read_weights_file  # noqa: E402
from modules import devices, paths, shared  # noqa: E402
from modules.upscaler import Upscaler, UpscalerData  # noqa: E402

#: ``UpscalerData.data_path`` of the built-in model's entry; other entries hold a weights file, or None for
#: the public weights not found at start-up (looked for again at each use, so no restart is needed).
BUILTIN = "<flowsr built-in>"
DEFAULT_WEIGHTS = "flowsr.safetensors"
WEIGHTS_SOURCE = "the Hugging Face repo chunjie-spring/FlowSR"
#: Each weights file is listed once per scale: A1111 sets its "Scale by" slider from the "4x" in a name.
LISTED_SCALES = (4, 2)
SETTINGS_SECTION = ("upscaling", "Upscaling", "postprocessing")


class Setting(NamedTuple):  # not a dataclass: A1111 loads scripts without registering them in sys.modules
    default: Any
    label: str
    component: str  # a gradio component class name
    component_args: Optional[dict] = None
    info: str = ""
    option: Optional[Option] = None  # the flowsr option the setting holds, checked when set and when read


def option_setting(option: Option, label: str, info: str = "") -> Setting:
    """A flowsr option as a setting, from its one definition: radio buttons, or a slider holding automatic as -1."""
    info = info or option.describe()
    if option.type is bool:
        return Setting(option.default, label, "Checkbox", None, info, option)
    if option.choices:
        return Setting(option.default, label, "Radio", {"choices": list(option.choices)}, info, option)
    return Setting(option.to_host(option.default), label, "Slider",
                   {"minimum": option.lowest, "maximum": option.maximum, "step": 1}, info, option)


SETTINGS = {
    "flowsr_tile_size": option_setting(TILE_SIZE, "FlowSR tile size (latent pixels)"),
    "flowsr_tile_overlap": option_setting(TILE_OVERLAP, "FlowSR tile overlap (latent pixels)",
                                          TILE_OVERLAP.describe() + " Kept to at most half of a fixed tile."),
    "flowsr_color_fix": option_setting(COLOR_FIX, "FlowSR colour fix"),
    "flowsr_steps": option_setting(STEPS, "FlowSR steps"),
    "flowsr_schedule": option_setting(SCHEDULE, "FlowSR schedule for more than one step"),
    "flowsr_dtype": option_setting(DTYPE, "FlowSR precision", "auto = bf16 on CUDA where supported; always fp32 on "
                                                              "the CPU and fp32 with --no-half"),
    "flowsr_compile": option_setting(COMPILE, "FlowSR: compile the network (torch.compile)"),
    "flowsr_base_model": Setting("", f"{SD21_BASE.name} model for FlowSR", "Textbox", None,
                                 "a file in models/Stable-diffusion or a full path; "
                                 f"empty = find {SD21_BASE.single_file}"),
    "flowsr_keep_loaded": Setting(True, "Keep the FlowSR model in RAM between uses", "Checkbox"),
}
#: A hidden setting marking settings saved since tile size 0 means "no tiling" (before, 0 was automatic).
SETTINGS_VERSION_KEY, SETTINGS_VERSION = "flowsr_settings_version", 2
SETTINGS_VERSION_OPTION = Option("settings_version", int, SETTINGS_VERSION, "Hidden.", minimum=1,
                                 maximum=SETTINGS_VERSION)
#: Every setting FlowSR checks, the hidden one included, and its default.
CHECKED_DEFAULTS = {**{key: spec.default for key, spec in SETTINGS.items()}, SETTINGS_VERSION_KEY: SETTINGS_VERSION}
#: How messages name the values of a setting that holds no flowsr option.
TYPE_NAMES = {bool: "true or false", str: "text"}
#: The value each setting holds since it was last set, put back when a new one is refused (an onchange callback
#: is not told the old value).
accepted_values: dict[str, Any] = {}


def refusal(key: str, value: Any) -> Optional[str]:
    """Why a FlowSR setting, hidden or not, cannot hold ``value`` (``"must be ..., got ..."``), or None.

    Type and range both: one wrongly typed value makes the host's GET /sdapi/v1/options answer 500 to everyone.
    """
    option = SETTINGS_VERSION_OPTION if key == SETTINGS_VERSION_KEY else SETTINGS[key].option
    if option is not None:
        return problem(option, option.from_host(value))
    kind = type(SETTINGS[key].default)
    return None if isinstance(value, kind) else f"must be {TYPE_NAMES[kind]}, got {value!r}"


def setting_label(key: str) -> str:
    if key == SETTINGS_VERSION_KEY:
        return f"the hidden setting {key}"
    return f"Settings > Upscaling > '{SETTINGS[key].label}' ({key})"


def setting(key: str) -> Any:
    """A setting's value as flowsr takes it, or its default where the host's options lack it.

    A value flowsr cannot take raises a BadInputError naming the setting: the host refuses it when it is set
    (see :func:`keep_good_value`), and this catches what comes another way (``override_settings`` of an API
    request, which skip the callbacks) before any work.
    """
    spec = SETTINGS[key]
    value = getattr(shared.opts, key, spec.default)
    wrong = refusal(key, value)
    if wrong is not None:
        raise flowsr.BadInputError(f"{setting_label(key)} {wrong}")
    return spec.option.from_host(value) if spec.option else value


def keep_good_value(key: str) -> None:
    """The ``onchange`` of every FlowSR setting: a refused value leaves one line in the log and the old value.

    ``Options.set`` (web UI, POST /sdapi/v1/options) calls it once the new value is in. Raising would also put
    the old value back, but the host then prints a traceback for what is a user's mistake.
    """
    value = shared.opts.data.get(key)
    wrong = refusal(key, value)
    if wrong is None:
        accepted_values[key] = value
        return
    shared.opts.data[key] = accepted_values[key]
    print(f"FlowSR: {setting_label(key)} {wrong}; it keeps {accepted_values[key]!r}", file=sys.stderr, flush=True)


def register_settings() -> None:
    """Add the settings when the script loads, not in an on_ui_settings callback: that one never runs with
    --nowebui, and then /sdapi/v1/options could not set them."""
    import gradio as gr

    saved_by_version_1 = "flowsr_tile_size" in shared.opts.data and SETTINGS_VERSION_KEY not in shared.opts.data
    options = {}
    for key, spec in SETTINGS.items():
        info = shared.OptionInfo(spec.default, spec.label, getattr(gr, spec.component), spec.component_args,
                                 onchange=functools.partial(keep_good_value, key))
        options[key] = info.info(spec.info) if spec.info else info
    for key, info in shared.options_section(SETTINGS_SECTION, options).items():
        shared.opts.add_option(key, info)
    shared.opts.add_option(SETTINGS_VERSION_KEY, shared.OptionInfo(
        SETTINGS_VERSION, section=(None, "Hidden options"), onchange=functools.partial(keep_good_value,
                                                                                        SETTINGS_VERSION_KEY)))
    if saved_by_version_1:
        migrate_version_1_settings()
    reset_unusable_saved_settings()
    accepted_values.update({key: getattr(shared.opts, key) for key in CHECKED_DEFAULTS})
    list_in_api_options()


def migrate_version_1_settings() -> None:
    """Tile size 0 was automatic, and the overlap then unused: keep those settings doing what they did."""
    if shared.opts.data.get("flowsr_tile_size") == 0:
        shared.opts.data.update(flowsr_tile_size=AUTOMATIC, flowsr_tile_overlap=AUTOMATIC)
        print("FlowSR: the saved tile size 0 (automatic in earlier versions) is now -1, automatic; 0 turns tiling "
              "off", file=shared.progress_print_out, flush=True)


def reset_unusable_saved_settings() -> None:
    """A saved value flowsr cannot take would fail every upscale, and a wrongly typed one GET /sdapi/v1/options."""
    for key, default in CHECKED_DEFAULTS.items():
        wrong = refusal(key, shared.opts.data.get(key, default))
        if wrong is not None:
            shared.opts.data[key] = default
            print(f"FlowSR: {setting_label(key)} {wrong}; using the default, {default}",
                  file=shared.progress_print_out, flush=True)


def list_in_api_options() -> None:
    """Make GET /sdapi/v1/options list the settings in Forge too.

    Its answer goes through the pydantic model that ``modules/api/models.py`` builds, on first import, from the
    options registered so far; keys the model lacks are dropped. A1111 imports it after loading every script.
    Forge's built-in ControlNet (extensions-builtin/sd_forge_controlnet/scripts/controlnet.py imports
    modules.api.api) loads before this extension and imports it first. The route reads ``models.OptionsModel``
    when the API starts, after the scripts: replace it by one with these settings added, typed as that module
    types every option.
    """
    models = sys.modules.get("modules.api.models")
    if models is None:
        return
    import pydantic

    fields = {}
    for key in [*SETTINGS, SETTINGS_VERSION_KEY]:
        info = shared.opts.data_labels[key]
        kind = shared.opts.typemap.get(type(info.default), type(info.default)) if info.default else Any
        fields[key] = (Optional[kind], pydantic.Field(default=info.default, description=info.label))
    models.OptionsModel = pydantic.create_model("Options", __base__=models.OptionsModel, **fields)


def device_and_dtype():
    """``--use-cpu all`` (or ``--use-cpu flowsr``) means the CPU, which always computes in fp32."""
    device = devices.get_device_for("flowsr")
    dtype = setting("flowsr_dtype")
    if device.type == "cpu" or (dtype == "auto" and shared.cmd_opts.no_half):
        dtype = "fp32"
    return device, dtype


def upscale_options(scale: float) -> dict:
    """The settings as the pipeline's options, checked before any model loads. FlowSR's scale range clamps the
    web UI's (which resizes to its target afterwards); the overlap is kept to half a fixed tile, since the two
    settings are set one at a time."""
    tile_size, overlap = setting("flowsr_tile_size"), setting("flowsr_tile_overlap")
    if tile_size and overlap is not None:
        overlap = min(overlap, tile_size // 2)
    return dict(scale=min(max(float(scale), SCALE.minimum), SCALE.maximum), steps=setting("flowsr_steps"),
                schedule=setting("flowsr_schedule"), tile_size=tile_size, tile_overlap=overlap,
                color_fix=setting("flowsr_color_fix"))


def free_host_memory() -> None:
    """Forge keeps its own models on the GPU until asked to free it; A1111 has no such call.

    Forge moved the call between versions: modules_forge.utils, modules_forge.forge_util, modules.upscaler.
    """
    for name in ("modules_forge.utils", "modules_forge.forge_util", "modules.upscaler"):
        try:
            prepare_free_memory = importlib.import_module(name).prepare_free_memory
        except (ImportError, AttributeError):
            continue
        prepare_free_memory(aggressive=True)
        return


def interrupted() -> bool:
    """flowsr's cancel hook, polled before every layer of the networks: Interrupt and Skip stop the upscale."""
    return bool(shared.state.interrupted or shared.state.skipped)


def stable_diffusion_dirs() -> list[str]:
    ckpt_dir = getattr(shared.cmd_opts, "ckpt_dir", None)
    return [d for d in (ckpt_dir, os.path.join(paths.models_path, "Stable-diffusion")) if d]


class UpscalerFlowSR(Upscaler):
    """One FlowSR pass at the requested scale; A1111 then resizes to its exact target size."""

    def __init__(self, dirname: Optional[str] = None):
        self.name = "FlowSR"
        self.model_name = "FlowSR"
        self.user_path = dirname  # --flowsr-models-path, declared in preload.py
        super().__init__(create_dirs=True)
        self.pipeline: Optional[flowsr.FlowSRPipeline] = None
        self.pipeline_key: Optional[tuple] = None
        self.pass_done = False
        self.scalers = self.list_entries()

    # ---------------------------------------------------------------------------------------- models

    def model_dirs(self) -> list[str]:
        return list(dict.fromkeys(os.path.abspath(d) for d in (self.user_path, self.model_path) if d))

    def weights_files(self) -> list[str]:
        """Weights in the FlowSR folders; an SD base model put there is not one."""
        files = self.find_models(ext_filter=[".safetensors"])
        return [f for f in files if not SD21_BASE.file_name_pattern.search(os.path.basename(f))]

    def list_entries(self) -> list:
        files = self.weights_files()
        default = next((f for f in files if Path(f).stem.lower() == "flowsr"), None)
        models = [("FlowSR", default)] + [(f"FlowSR {Path(f).stem}", f) for f in files if f != default]
        entries = [UpscalerData(f"{name} {scale}x", path, self, scale=scale)
                   for name, path in models for scale in LISTED_SCALES]
        return entries + [UpscalerData(f"{flowsr.BUILTIN_MODEL_NAME} 4x", BUILTIN, self, scale=4)]

    def resolve(self, selected_model: Optional[str]) -> tuple[Optional[str], Optional[str]]:
        """(checkpoint, base model) of an entry; a missing file is a CheckpointError naming where it goes."""
        if selected_model == BUILTIN:
            return None, None
        folder = self.model_dirs()[0]
        checkpoint = selected_model or next(
            (f for f in self.weights_files() if Path(f).stem.lower() == "flowsr"), None)
        if checkpoint is None:
            raise flowsr.CheckpointError(
                f"FlowSR weights not found: download {DEFAULT_WEIGHTS} from {WEIGHTS_SOURCE} into {folder} "
                f"(no restart needed). The '{flowsr.BUILTIN_MODEL_NAME} 4x' upscaler works without it.")
        if not os.path.isfile(checkpoint):
            raise flowsr.CheckpointError(f"FlowSR weights {checkpoint} are gone: put the file back into {folder}, "
                                         "or pick another FlowSR upscaler")
        if read_weights_file(checkpoint).kind != FLOWSR_LORA:
            return checkpoint, None  # a full model needs no base; a wrong file gets flowsr's own message
        return checkpoint, self.find_base_model()

    def find_base_model(self) -> str:
        sd_dirs = stable_diffusion_dirs()
        configured = str(setting("flowsr_base_model")).strip()
        if configured:
            candidates = [configured] + [os.path.join(d, configured) for d in sd_dirs]
            found = next((c for c in candidates if os.path.exists(c)), None)
            if found is None:
                raise flowsr.CheckpointError(
                    f"the FlowSR base model '{configured}' (Settings > Upscaling) is neither a path nor a file in "
                    f"{sd_dirs[0]}: correct the setting, or clear it to look for {SD21_BASE.single_file}")
            return found
        for folder in [*self.model_dirs(), *sd_dirs]:
            for file in shared.walk_files(folder, allowed_extensions=[".safetensors"]):
                if SD21_BASE.file_name_pattern.search(os.path.basename(file)):
                    return file
        raise flowsr.CheckpointError(
            f"FlowSR needs the {SD21_BASE.full_name} model: put {SD21_BASE.single_file} into {sd_dirs[-1]}, or set "
            f"its path in Settings > Upscaling > '{SD21_BASE.name} model for FlowSR'")

    def load(self, checkpoint: Optional[str], base_model: Optional[str]) -> flowsr.FlowSRPipeline:
        """The pipeline on the device A1111 assigns, kept between uses while its inputs stay the same."""
        device, dtype = device_and_dtype()
        if device.type != "cpu":
            free_host_memory()
        key = (checkpoint, base_model, dtype, setting("flowsr_compile"))
        if self.pipeline_key != key:
            self.unload()
            print(f"FlowSR: loading {checkpoint or flowsr.BUILTIN_MODEL_NAME} ({dtype}, {device})",
                  file=shared.progress_print_out, flush=True)
            self.pipeline = flowsr.FlowSRPipeline.from_pretrained(checkpoint, base_model, device=device, dtype=dtype,
                                                                  compile=key[-1])
            self.pipeline_key = key
        return self.pipeline.to(device)

    def unload(self) -> None:
        self.pipeline = self.pipeline_key = None
        devices.torch_gc()

    def release(self) -> None:
        """Give the accelerator back to the host's own models: keep the pipeline in RAM, or drop it."""
        if not setting("flowsr_keep_loaded"):
            self.unload()
            return
        if self.pipeline is not None and self.pipeline.model.device.type != "cpu":
            self.pipeline.to("cpu")
        devices.torch_gc()

    # ------------------------------------------------------------------------------------- upscaling

    def upscale(self, img, scale, selected_model: Optional[str] = None):
        self.pass_done = False
        return super().upscale(img, scale, selected_model)

    def do_upscale(self, img, selected_model: Optional[str]):
        if self.pass_done:
            # Upscaler.upscale() calls again while the image is below its target (above FlowSR's largest
            # scale, or after an interrupt): a second diffusion pass would upscale the upscaled image.
            return img
        self.pass_done = True
        options = upscale_options(self.scale)
        with image_counted_unfinished():
            pipeline = self.load(*self.resolve(selected_model))
            try:
                return self.run(pipeline, img, options)
            except flowsr.Cancelled:
                print("FlowSR: interrupted; the image is only resized", file=shared.progress_print_out, flush=True)
                return img
            finally:
                self.release()

    def run(self, pipeline: flowsr.FlowSRPipeline, img, options: dict):
        progress = ConsoleProgress(getattr(shared.opts, "enable_upscale_progressbar", True))
        try:
            return pipeline.upscale(img, **options, progress=progress, cancel=interrupted)
        finally:
            progress.close()


@contextmanager
def image_counted_unfinished():
    """While FlowSR loads and upscales, the progress the host shows counts the image as not yet finished.

    The web UI and /sdapi/v1/progress show ``job_no / job_count`` plus the share of this job's steps done. Extras
    counts its image as a finished job as it starts it (``state.nextjob()`` comes first), so they would show the
    end all the while FlowSR works; and the steps are the last upscale's until FlowSR reports its own.
    """
    state = shared.state
    lowered = in_postprocessing() and state.job_no > 0
    if lowered:
        state.job_no -= 1
    state.sampling_step = state.sampling_steps = 0
    try:
        yield
    finally:
        if lowered:
            state.job_no += 1


def in_postprocessing() -> bool:
    """Whether the host's job is Extras: it is named "extras", then after each postprocessing script as that
    script runs (the Upscale script, for upscalers; found in real A1111 1.10.1, where a check of "extras" alone
    never held)."""
    from modules import scripts

    runner = getattr(scripts, "scripts_postproc", None)
    names = {script.name for script in getattr(runner, "scripts", None) or ()}
    return shared.state.job == "extras" or shared.state.job in names


class ConsoleProgress:
    """A1111's progress (``shared.state``, which the web UI and the API poll) and one console line per upscale.

    The bar starts at the first network call, once the total is known (a bar without a total prints a
    "0call" frame of its own), and only its closing frame shows the end (tqdm redraws when it closes, so
    drawing the last call too would print 100% twice).
    """

    def __init__(self, console: bool):
        self.console = console
        self.bar = None
        self.started = time.time()

    def __call__(self, done: int, total: int) -> None:
        shared.state.sampling_steps, shared.state.sampling_step = total, done
        if not self.console:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc="FlowSR", unit="call", total=total)
            self.bar.start_t = self.started  # the rate counts the first call too
        self.bar.total = total  # grows when out of memory made the tiles smaller
        if done < total:
            self.bar.update(done - self.bar.n)
        else:
            self.bar.n = done  # drawn by close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def load_upscalers_and_flowsr(load_upscalers) -> None:
    """The host's ``modelloader.load_upscalers``, then FlowSR's entries where it left them out.

    A1111 lists every subclass of ``Upscaler``; reForge lists a fixed set of its own classes, so there FlowSR
    adds its entries each time the list is built, with the models path A1111 would pass (--flowsr-models-path).
    """
    load_upscalers()
    if not any(entry.scaler.name == "FlowSR" for entry in shared.sd_upscalers):
        flowsr_upscaler = UpscalerFlowSR(getattr(shared.cmd_opts, "flowsr_models_path", None))
        shared.sd_upscalers = [*shared.sd_upscalers, *flowsr_upscaler.scalers]


def list_in_upscalers() -> None:
    from modules import modelloader

    modelloader.load_upscalers = functools.partial(load_upscalers_and_flowsr, modelloader.load_upscalers)


register_settings()
list_in_upscalers()
