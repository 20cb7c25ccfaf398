"""What the nodes do inside ComfyUI: find model files, load them once, and run the flowsr pipeline under
ComfyUI's memory manager, progress bar and Cancel button.

Everything here translates between ComfyUI and :mod:`flowsr`; the method itself lives in ``flowsr/``.
"""
from __future__ import annotations

import logging
import os
import weakref
from typing import Optional

import torch

import comfy.model_management as model_management
import comfy.utils
import folder_paths
from comfy.model_patcher import ModelPatcher

from .. import flowsr
from ..flowsr import downloads
from ..flowsr.devices import resolve_dtype
from ..flowsr.families import SD21_BASE
from ..flowsr.options import COMPILE, DTYPE, UPSCALE_OPTIONS, check_option, check_upscale_options
from ..flowsr.speed import compile_network

logger = logging.getLogger(__name__)

#: ComfyUI's model folder for FlowSR weights (``models/flowsr``).
MODEL_FOLDER = "flowsr"
#: Only safetensors are listed: flowsr never unpickles weights.
WEIGHT_EXTENSIONS = {".safetensors"}
NO_BASE_MODEL = "none"
#: How diffusers folders from ``models/diffusers`` appear among the base models.
DIFFUSERS_PREFIX = "[diffusers] "
#: How the files that download themselves are listed. Always listed, downloaded or not: ComfyUI refuses a
#: workflow whose choice is not in the list, and a shared workflow that names one works on every machine.
DOWNLOAD_SUFFIX = " (download if missing)"
#: Working memory asked of ComfyUI beyond the weights, as a multiple of the weights, at most this many bytes.
WORKING_MEMORY_FACTOR, MAX_WORKING_MEMORY = 4, 3 * 2 ** 30


def register_model_folder() -> None:
    """Add ``models/flowsr`` after any ``flowsr`` paths that ``extra_model_paths.yaml`` already set."""
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    folder_paths.add_model_folder_path(MODEL_FOLDER, default)
    paths, _ = folder_paths.folder_names_and_paths[MODEL_FOLDER]
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, WEIGHT_EXTENSIONS)
    try:
        os.makedirs(default, exist_ok=True)  # so users see where the weights go
    except OSError:
        logger.warning("FlowSR: cannot create %s; put FlowSR weights in another models path", default)


def weight_choices() -> list[str]:
    return [flowsr.BUILTIN_MODEL_NAME, *folder_paths.get_filename_list(MODEL_FOLDER),
            downloads.FLOWSR_WEIGHTS.filename + DOWNLOAD_SUFFIX]


def base_model_choices() -> list[str]:
    """Base model candidates: single .safetensors checkpoints, diffusers folders, then SD 2.1's download."""
    checkpoints = [name for name in folder_paths.get_filename_list("checkpoints")
                   if os.path.splitext(name)[1].lower() in WEIGHT_EXTENSIONS]
    return [NO_BASE_MODEL, *checkpoints, *(DIFFUSERS_PREFIX + name for name in _diffusers_folders()),
            downloads.SD21_BASE_FILE.filename + DOWNLOAD_SUFFIX]


def _diffusers_folders() -> list[str]:
    found = []
    for root in folder_paths.get_folder_paths("diffusers"):
        for directory, _, files in os.walk(root, followlinks=True):
            if "model_index.json" in files:
                found.append(os.path.relpath(directory, root))
    return sorted(found)


def _resolve_weights(name: str) -> Optional[str]:
    if name == flowsr.BUILTIN_MODEL_NAME:
        return None
    if name.endswith(DOWNLOAD_SUFFIX):
        return _downloaded(downloads.FLOWSR_WEIGHTS, MODEL_FOLDER)
    return _existing(folder_paths.get_full_path(MODEL_FOLDER, name), name, f"models/{MODEL_FOLDER}")


def _resolve_base_model(name: str) -> Optional[str]:
    if name == NO_BASE_MODEL:
        return None
    if name.endswith(DOWNLOAD_SUFFIX):
        return _downloaded(downloads.SD21_BASE_FILE, "checkpoints")
    if name.startswith(DIFFUSERS_PREFIX):
        folder = name[len(DIFFUSERS_PREFIX):]
        candidates = (os.path.join(root, folder) for root in folder_paths.get_folder_paths("diffusers"))
        return _existing(next((c for c in candidates if os.path.isdir(c)), None), folder, "models/diffusers")
    return _existing(folder_paths.get_full_path("checkpoints", name), name, "models/checkpoints")


def _downloaded(file: downloads.HubFile, folder_name: str) -> str:
    """The file from any of the model folder's paths, else downloaded into its first one, with progress shown
    on the node (Cancel stops the download; the next run continues it)."""
    found = folder_paths.get_full_path(folder_name, file.filename)
    if found is not None:
        return found
    folder = folder_paths.get_folder_paths(folder_name)[0]
    return str(downloads.download(file, folder, progress=_ProgressBar()))


def _existing(path: Optional[str], name: str, where: str) -> str:
    if path is None:
        raise flowsr.CheckpointError(f"'{name}' is not in {where} (or the extra paths set for it) any more; "
                                     "put it back, or pick another file and press Refresh (R)")
    return path


class FlowSRForModelPatcher(torch.nn.Module):
    """The FlowSR model as ComfyUI's ModelPatcher wants it.

    The patcher writes its bookkeeping (``device``, loaded bytes...) onto the module it manages; FlowSRModel
    computes ``device`` from its parameters, so it sits one level down, as ``flowsr``.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.flowsr = model
        self.device = model.device

    def get_dtype(self) -> torch.dtype:
        return self.flowsr.dtype


class LoadedFlowSR:
    """What the FLOWSR_MODEL socket carries: the pipeline, and the patcher through which ComfyUI moves it."""

    def __init__(self, pipeline, patcher: ModelPatcher, description: str):
        self.pipeline = pipeline
        self.patcher = patcher
        self.description = description

    def __repr__(self) -> str:  # shown in ComfyUI's error reports
        return f"<FlowSR model {self.description}>"


# A loader run with the same files and options returns the model that is still alive (in ComfyUI's output
# cache or a running graph) instead of a second copy; once ComfyUI lets go of it, it is freed.
_loaded: "weakref.WeakValueDictionary[tuple, LoadedFlowSR]" = weakref.WeakValueDictionary()


def load(flowsr_weights: str, base_model: str, dtype: str, compile: bool = COMPILE.default) -> LoadedFlowSR:
    check_option(DTYPE, dtype)
    check_option(COMPILE, compile)
    weights_path, base_path = _resolve_weights(flowsr_weights), _resolve_base_model(base_model)
    load_device, offload_device = model_management.get_torch_device(), model_management.unet_offload_device()
    torch_dtype = _dtype_for(dtype, load_device)
    key = (_file_identity(weights_path), _file_identity(base_path), torch_dtype, str(load_device), str(offload_device),
           compile)
    cached = _loaded.get(key)
    if cached is not None:
        return cached
    try:
        pipeline = flowsr.FlowSRPipeline.from_pretrained(weights_path, base_path, device=offload_device,
                                                         dtype=torch_dtype)
    except flowsr.FlowSRError as error:
        raise type(error)(f"{error}\n{_where_files_go()}") from error
    if compile:  # checked for the device it will run on, not the offload device it loads on
        compile_network(pipeline.model, load_device)
    patcher = ModelPatcher(FlowSRForModelPatcher(pipeline.model), load_device=load_device, offload_device=offload_device)
    description = flowsr_weights if base_path is None else f"{flowsr_weights} on {base_model}"
    loaded = LoadedFlowSR(pipeline, patcher, f"{description} ({str(torch_dtype).removeprefix('torch.')})")
    _loaded[key] = loaded
    return loaded


def _dtype_for(name: str, device: torch.device) -> torch.dtype:
    """``auto`` follows ComfyUI's judgement of the device (and its --force-fp32/--force-fp16 flags)."""
    if name != "auto":
        return resolve_dtype(name, device)
    if model_management.should_use_bf16(device):
        return torch.bfloat16
    if model_management.should_use_fp16(device):
        return torch.float16
    return torch.float32


def _file_identity(path: Optional[str]) -> Optional[tuple]:
    """A file or folder as the cache tells it apart: a replaced file loads anew."""
    if path is None:
        return None
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_mtime_ns, stat.st_size


def _where_files_go() -> str:
    weights = ", ".join(folder_paths.get_folder_paths(MODEL_FOLDER))
    return (f"In ComfyUI: flowsr.safetensors goes in {weights}; the {SD21_BASE.name} model it applies to "
            f"({SD21_BASE.single_file}) in models/checkpoints, or as a diffusers folder in models/diffusers.")


def upscale(flowsr_model: LoadedFlowSR, image, scale: float, tile_size: int, tile_overlap: int, color_fix: str,
            seed: int, steps: int = 1, schedule: str = "uniform") -> torch.Tensor:
    """ComfyUI IMAGE in, IMAGE out: (B, H, W, 3) float32 in [0, 1] on the CPU; ``-1`` means automatic."""
    if not isinstance(flowsr_model, LoadedFlowSR):
        raise flowsr.BadInputError("flowsr_model must come from the 'Load FlowSR Model' node")
    pixels = image_to_pixels(image)
    options = checked_widgets(scale=scale, steps=steps, schedule=schedule, tile_size=tile_size,
                              tile_overlap=tile_overlap, color_fix=color_fix, seed=seed)
    # Our diffusers modules know nothing of ComfyUI's per-layer offloading: they are loaded whole.
    return run_loaded(flowsr_model.pipeline, pixels, options, [flowsr_model.patcher], force_full_load=True)


def checked_widgets(**values) -> dict:
    """Widget values as flowsr options, checked before ComfyUI moves any model onto the GPU."""
    options = from_widgets(**values)
    check_upscale_options(options)
    return options


def run_loaded(pipeline: flowsr.FlowSRPipeline, pixels: torch.Tensor, options: dict, patchers: list,
               force_full_load: bool) -> torch.Tensor:
    """The pipeline on models that ComfyUI's memory manager loads, with its progress bar and Cancel; pixels
    (B, 3, H, W) in, a ComfyUI IMAGE out."""
    memory_required = working_memory(patchers)

    def attempt() -> torch.Tensor:
        model_management.load_models_gpu(patchers, memory_required=memory_required, force_full_load=force_full_load)
        return pipeline.upscale_tensor(pixels, **options, progress=_ProgressBar(), cancel=_stop_if_interrupted)

    try:
        output = attempt()
    except flowsr.OutOfMemoryError:
        # flowsr already shrank its tiles to the smallest; what is left is the room other models take
        logger.warning("FlowSR: out of memory with the smallest tiles; unloading ComfyUI's models, trying again")
        model_management.unload_all_models()
        model_management.soft_empty_cache()
        try:
            output = attempt()
        except flowsr.OutOfMemoryError as error:
            # ComfyUI's own out-of-memory handling: its advice to the user, and every model unloaded
            raise model_management.OOM_EXCEPTION(str(error)) from error
    return output.movedim(1, -1).float().cpu().contiguous()


def from_widgets(**values) -> dict:
    """Widget values as flowsr takes them: ComfyUI's INT widgets cannot hold None, so -1 stands for automatic."""
    return {name: UPSCALE_OPTIONS[name].from_host(value) for name, value in values.items()}


def working_memory(patchers: list) -> int:
    """Bytes ComfyUI should free for activations, so other models move out before the tiles run."""
    weights = sum(patcher.model_size() for patcher in patchers)
    return min(MAX_WORKING_MEMORY, WORKING_MEMORY_FACTOR * weights)


class _ProgressBar:
    """flowsr's ``progress(done, total)`` onto ComfyUI's progress bar: finished network calls of an upscale,
    bytes of a download.

    ComfyUI's progress hook also raises when Cancel was pressed, so this stops work too.
    """

    def __init__(self):
        self.bar: Optional[comfy.utils.ProgressBar] = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(total)
        self.bar.update_absolute(done, total)


def _stop_if_interrupted() -> bool:
    """flowsr's cancel hook, polled before every layer of the networks (a lock and a flag): raise ComfyUI's own
    interrupt exception, so that ComfyUI reports 'interrupted' rather than an error."""
    model_management.throw_exception_if_processing_interrupted()
    return False


def image_to_pixels(image) -> torch.Tensor:
    """A ComfyUI IMAGE (B, H, W, 3) to flowsr's (B, 3, H, W), refusing what would upscale wrongly."""
    if isinstance(image, (list, tuple)):
        image = _stack_list(image)
    if not isinstance(image, torch.Tensor):
        raise flowsr.BadInputError(f"expected an IMAGE tensor, got {type(image).__name__}; connect an IMAGE "
                                   "output (e.g. from Load Image) to 'image'")
    if image.ndim == 3:
        raise flowsr.BadInputError(
            f"got a tensor shaped {tuple(image.shape)}, which is a MASK, not an IMAGE: convert it with the "
            "'Convert Mask to Image' node first")
    if image.ndim != 4:
        raise flowsr.BadInputError(f"an IMAGE is shaped (batch, height, width, channels); got {tuple(image.shape)}")
    channels = image.shape[-1]
    if channels == 4:
        raise flowsr.BadInputError(
            "this IMAGE has an alpha channel (RGBA); FlowSR upscales RGB. Split it with the 'Split Image with "
            "Alpha' node, upscale the image, and resize the alpha mask on its own (e.g. 'Upscale Image' after "
            "'Convert Mask to Image')")
    if channels != 3:
        raise flowsr.BadInputError(
            f"this IMAGE has {channels} channel(s); FlowSR takes RGB (3). A mask or grey image must go through "
            "'Convert Mask to Image' first")
    return image.movedim(-1, 1).float().clamp(0, 1)


def _stack_list(images: list | tuple) -> torch.Tensor:
    """Some nodes hand over a list of images; one batch needs one size."""
    tensors = [i if i.ndim == 4 else i[None] for i in images if isinstance(i, torch.Tensor)]
    if len(tensors) != len(images) or not tensors:
        raise flowsr.BadInputError("expected an IMAGE batch; got a list that is empty or holds other things")
    sizes = sorted({f"{t.shape[2]}x{t.shape[1]}" for t in tensors})
    if len(sizes) > 1:
        raise flowsr.BadInputError(
            f"the image batch mixes sizes ({', '.join(sizes)}); a batch must share one size. Upscale the images "
            "separately, or bring them to one size first (e.g. the 'Upscale Image' node)")
    return torch.cat(tensors)
