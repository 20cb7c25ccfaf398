"""Stand-in for modules/devices.py (v1.10.1): ``get_device_for(task)`` is the CPU when the task or "all" is in
--use-cpu, else the optimal device; ``torch_gc()`` empties the accelerator caches (counted here)."""
import torch

cpu = torch.device("cpu")
device = None
torch_gc_calls = 0


def get_optimal_device():
    return torch.device("cuda") if torch.cuda.is_available() else cpu


def get_device_for(task):
    from modules import shared

    if task in shared.cmd_opts.use_cpu or "all" in shared.cmd_opts.use_cpu:
        return cpu
    return get_optimal_device()


def torch_gc():
    global torch_gc_calls
    torch_gc_calls += 1
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
