"""Stand-in for ``comfy.model_management`` (checked against Comfy-Org/ComfyUI a125cd84b054).

The device is the CPU (as with ``--cpu``); ``load_models_gpu`` keeps ComfyUI's bookkeeping of loaded
patchers and moves them the way the real one does with ``force_full_load``; the interrupt flag works as
ComfyUI's Cancel button sets it. Tests read ``load_calls`` (not in ComfyUI).
"""
from __future__ import annotations

import threading

import torch

OOM_EXCEPTION = torch.cuda.OutOfMemoryError

current_loaded_models: list = []
#: Test hook (not in ComfyUI): the arguments of every load_models_gpu call.
load_calls: list[dict] = []


def get_torch_device() -> torch.device:
    return torch.device("cpu")


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    return torch.device("cpu")


def module_size(module: torch.nn.Module) -> int:
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return device is None or device.type != "cpu"


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return device is None or device.type != "cpu"


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False) -> None:
    load_calls.append(dict(models=list(models), memory_required=memory_required, force_full_load=force_full_load))
    for patcher in models:
        if patcher not in current_loaded_models:
            current_loaded_models.insert(0, patcher)
        patcher.patch_model(patcher.load_device, lowvram_model_memory=0 if force_full_load else 1)


def free_memory(memory_required, device, keep_loaded=[]) -> list:
    unloaded = [p for p in current_loaded_models if p not in keep_loaded]
    for patcher in unloaded:
        patcher.detach()
        current_loaded_models.remove(patcher)
    return unloaded


def unload_all_models() -> None:
    free_memory(1e30, get_torch_device())


def soft_empty_cache(force=False) -> None:
    pass


class InterruptProcessingException(Exception):
    pass


interrupt_processing_mutex = threading.RLock()
interrupt_processing = False


def interrupt_current_processing(value=True) -> None:
    global interrupt_processing
    with interrupt_processing_mutex:
        interrupt_processing = value


def processing_interrupted() -> bool:
    with interrupt_processing_mutex:
        return interrupt_processing


def throw_exception_if_processing_interrupted() -> None:
    global interrupt_processing
    with interrupt_processing_mutex:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()
