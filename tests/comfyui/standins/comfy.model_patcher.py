"""Stand-in for ``comfy.model_patcher.ModelPatcher`` (checked against Comfy-Org/ComfyUI a125cd84b054).

Like the real one it writes its bookkeeping onto the wrapped module (``device``,
``model_loaded_weight_memory``, ...), moves the whole module on a full load and back on ``detach``.
"""
from __future__ import annotations

import torch

import comfy.model_management


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if not hasattr(self.model, "device") or self.model.device is None:
            self.model.device = offload_device
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.parent = None
        self.model_size()
        if not hasattr(self.model, "model_loaded_weight_memory"):
            self.model.model_loaded_weight_memory = 0
        if not hasattr(self.model, "lowvram_patch_counter"):
            self.model.lowvram_patch_counter = 0
        if not hasattr(self.model, "model_lowvram"):
            self.model.model_lowvram = False

    def model_size(self) -> int:
        if self.size > 0:
            return self.size
        self.size = comfy.model_management.module_size(self.model)
        return self.size

    def loaded_size(self) -> int:
        return self.model.model_loaded_weight_memory

    def model_dtype(self):
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()

    def is_clone(self, other) -> bool:
        return hasattr(other, "model") and self.model is other.model

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        if load_weights:
            self.load(device_to, lowvram_model_memory=lowvram_model_memory, full_load=lowvram_model_memory == 0)
        return self.model

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        if full_load:
            self.model.to(device_to)
        self.model.device = device_to
        self.model.model_loaded_weight_memory = self.model_size() if full_load else 0

    def detach(self, unpatch_all=True):
        self.model.to(self.offload_device)
        self.model.device = self.offload_device
        self.model.model_loaded_weight_memory = 0
        return self.model

    def current_loaded_device(self) -> torch.device:
        return self.model.device
