"""Start ComfyUI on the CPU in the mode its --lowvram or --novram sets, which ComfyUI 0.3.64 refuses beside --cpu.

Its argparse puts --cpu, --lowvram and --novram in one exclusive group, and ``load_models_gpu`` loads every model
whole on a CPU device whatever the mode. This launcher sets the mode as the flag would
(``model_management.vram_state``) and, while ``load_models_gpu`` runs, has it take the CPU for an accelerator
with FREE_MEMORY_MIB free. ComfyUI's partial loading then runs as on a small GPU: the weights it leaves out are
cast, and patched, layer by layer when used (comfy.ops, LowVramPatch); the server logs "loaded partially". The
devices are all the CPU, so this checks the offloading code path, not the transfers. The rest is ComfyUI's own
``main.py``, unchanged.

    cd ComfyUI && python comfyui_vram_on_cpu.py {lowvram|novram} main.py --cpu ...
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

FREE_MEMORY_MIB = 256


class AsOnASmallGPU:
    """``load_models_gpu`` as on a GPU with FREE_MEMORY_MIB free; everything else sees the CPU as it is."""

    def __init__(self, model_management):
        self.model_management = model_management
        self.load_models_gpu = model_management.load_models_gpu
        self.is_device_cpu = model_management.is_device_cpu
        self.get_free_memory = model_management.get_free_memory

    def __call__(self, *args, **kwargs):
        model_management = self.model_management
        model_management.is_device_cpu = self.never_cpu
        model_management.get_free_memory = self.small_free_memory
        try:
            return self.load_models_gpu(*args, **kwargs)
        finally:
            model_management.is_device_cpu = self.is_device_cpu
            model_management.get_free_memory = self.get_free_memory

    @staticmethod
    def never_cpu(device) -> bool:
        return False

    @staticmethod
    def small_free_memory(dev=None, torch_free_too=False):
        free = FREE_MEMORY_MIB * 1024 * 1024
        return (free, free) if torch_free_too else free


def main() -> None:
    mode, script, *arguments = sys.argv[1:]
    sys.argv = [script, *arguments]
    sys.path[0] = str(Path.cwd())  # ComfyUI's folder, as when main.py is run itself
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.model_management as model_management

    model_management.vram_state = {"lowvram": model_management.VRAMState.LOW_VRAM,
                                   "novram": model_management.VRAMState.NO_VRAM}[mode]
    model_management.load_models_gpu = AsOnASmallGPU(model_management)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
