"""Stand-in for ``comfy.weight_adapter`` (checked against Comfy-Org/ComfyUI a125cd84b054): the LoRA adapter that
``ModelPatcher.add_patches`` takes, holding ``(up, down, alpha, mid, dora_scale, reshape)``."""
from __future__ import annotations


class WeightAdapterBase:
    name: str


class LoRAAdapter(WeightAdapterBase):
    name = "lora"

    def __init__(self, loaded_keys, weights):
        self.loaded_keys = loaded_keys
        self.weights = weights
