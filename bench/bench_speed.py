"""Every speed lever side by side in one run, as ratios to today's main path (issue 25; README, "Speed").

    python bench/bench_speed.py --model builtin --inputs 256 --dtypes fp32 bf16 --repeat 3          # CPU
    python bench/bench_speed.py --model sd-random --inputs 128 256 --dtypes fp32 bf16 --repeat 1    # CPU, ~1 h
    python bench/bench_speed.py --gpu-table --budget 400                                          # gpu_session.sh
    python bench/bench_speed.py --gpu-table --device cpu --model sd-tiny --sizes 32 64 --backend aot_eager  # check it

Levers (CPU table): ``baseline`` is what the CLI does today (the LoRA merged into the weights, contiguous
memory, eager); ``unmerged LoRA`` keeps peft's adapter layers (the public rank 4 on the usual SD targets, rank 16
on the VAE encoder's); ``channels-last`` (:func:`flowsr.speed.use_channels_last`); ``compiled``
(:func:`flowsr.speed.compile_network`); ``all`` is compiled and channels-last. ``sd-random`` is SD 2.1-base at
full width with random weights (speed does not depend on values). Each configuration runs in a fresh process
(its own peak RSS) with an empty inductor cache of this run, so ``first`` is the cold cost of a first call,
compilation included; ``seconds`` is the best of ``--repeat`` calls after it. No tiles: one pass.

``--gpu-table`` (CUDA, one process, peak = max allocated; the images stay on the host, as the CLI holds them):
64-latent tiles (what automatic tiling gives an 8 GB card). First the eager rows at 512 -> 2048 (bf16 and fp16,
1-4 tiles per call, channels-last off and on) against the fp32 one-tile-at-a-time baseline; then 1024 -> 8192 at
the same tiles, its peak against 512 -> 2048's; then the compiled rows; then the fastest compiled setting at
1024 -> 8192 and the compiled outputs against the eager ones; each row only while ``--budget`` seconds last.
Last, the attention kernels. ``--sdpa`` alone: each scaled-dot-product-attention backend this device has, at the
SD 2.1 UNet's attention shapes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LEVERS = {  # name: (LoRA merged, channels-last, compiled)
    "baseline": (True, False, False),
    "unmerged LoRA": (False, False, False),
    "channels-last": (True, True, False),
    "compiled": (True, False, True),
    "all": (True, True, True),
}
#: The public checkpoint's LoRA (docs/FORMAT.md): rank 4 on the UNet, 16 on the VAE encoder's listed layers.
UNET_LORA = (4, ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                 "conv1", "conv2"])
VAE_LORA = (16, ["encoder.conv_in", "encoder.down_blocks.0.resnets.0.conv1", "encoder.down_blocks.1.resnets.0.conv2",
                 "encoder.mid_block.attentions.0.to_v"])
GPU_TILE = 64


def build_model(name: str, device: torch.device, merged: bool):
    """The network, in fp32 on ``device``; ``merged=False`` adds the public LoRA's adapters, unmerged."""
    from flowsr.lora import UNET_ADAPTER, VAE_ADAPTER, add_lora

    if name == "builtin":
        from flowsr.models.tiny import load_builtin
        return load_builtin().to(device)
    if name == "sd-tiny":  # SD 2.1's classes at a few channels: a quick check of the scripts, not of speed
        from bench_upscale import sd_tiny
        return sd_tiny().to(device)
    from flowsr.models.sd import SDFlowSRModel
    with device:
        model = SDFlowSRModel.from_configs()
    if not merged:
        add_lora(model.unet, *UNET_LORA, UNET_ADAPTER)
        add_lora(model.vae, *VAE_LORA, VAE_ADAPTER)
    return model.to(device)


def prepare(model, dtype: torch.dtype, channels_last: bool, compiled: bool, backend: str = "inductor"):
    """Cast, set the memory format, compile; returns the compiled regions (None: eager)."""
    from flowsr.speed import compile_network, use_channels_last

    use_channels_last(model.to(dtype), channels_last)
    return compile_network(model, backend=backend) if compiled else None


def timed(pipe, image: torch.Tensor, options: dict) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.no_grad():
        out = pipe.upscale_tensor(image, **options)
    if pipe.model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def unique_graphs() -> int:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


# --------------------------------------------------------------------------------------------- the CPU table

def one(config: dict) -> dict:
    """One configuration in this process: first call, best of the rest, peak RSS."""
    from flowsr import FlowSRPipeline
    from flowsr.devices import DTYPES

    merged, channels_last, compiled = LEVERS[config["lever"]]
    torch.manual_seed(0)
    model = build_model(config["model"], torch.device("cpu"), merged)
    regions = prepare(model, DTYPES[config["dtype"]], channels_last, compiled)
    pipe = FlowSRPipeline(model)
    image = torch.rand(1, 3, config["input"], config["input"])
    options = dict(scale=config["scale"], tile_size=config["tile_size"])
    first, _ = timed(pipe, image, options)
    times = [timed(pipe, image, options)[0] for _ in range(config["repeat"])]
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    return {"first": first, "seconds": min(times), "peak_mib": peak, "graphs": unique_graphs(),
            "regions": len(regions) if regions else 0}


def in_subprocess(config: dict, cache: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return {"error": lines[-1][:200] if lines else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(name: str, result: dict, baseline: dict | None) -> str:
    if "error" in result:
        return f"| {name} | failed: {result['error']} | | | | |"
    time_ratio = memory_ratio = ""
    if baseline and "error" not in baseline:
        time_ratio = f"x{baseline['seconds'] / result['seconds']:.2f}"
        memory_ratio = f"x{result['peak_mib'] / baseline['peak_mib']:.2f}"
    return (f"| {name} | {result['seconds']:.2f} | {time_ratio} | {result['first']:.1f} | "
            f"{result['peak_mib'] / 1024:.2f} | {memory_ratio} |")


def cpu_table(args: argparse.Namespace) -> None:
    cache = tempfile.mkdtemp(prefix="flowsr-inductor-")
    levers = [lever for lever in LEVERS if args.model != "builtin" or lever != "unmerged LoRA"]
    print(f"FlowSR speed levers on the CPU ({os.cpu_count()} cores, torch {torch.__version__}), model "
          f"{args.model}, untiled, each in a fresh process with a cold inductor cache; speed-up = baseline "
          f"seconds / seconds, best of {args.repeat} after the first call", flush=True)
    for size in args.inputs:
        for dtype in args.dtypes:
            print(f"\n{size} -> {size * 4}, {dtype}\n\n| lever | seconds | speed-up | first call s | "
                  f"peak RSS GiB | memory |\n|---|---|---|---|---|---|", flush=True)
            baseline = None
            for lever in levers:
                config = dict(model=args.model, lever=lever, dtype=dtype, input=size, scale=4, tile_size=0,
                              repeat=args.repeat)
                result = in_subprocess(config, cache)
                baseline = baseline or result
                print(row(lever, result, baseline), flush=True)
    print(f"\nfirst call of 'compiled' with the inductor cache of this run warm (a second process):", flush=True)
    config = dict(model=args.model, lever="compiled", dtype=args.dtypes[0], input=args.inputs[0], scale=4,
                  tile_size=0, repeat=1)
    warm = in_subprocess(config, cache)
    print(row(f"compiled, {args.inputs[0]} px, {args.dtypes[0]}, warm cache", warm, None), flush=True)


# --------------------------------------------------------------------------------------------- the GPU table

class GpuTable:
    """Every configuration in one process; stops starting new ones once ``budget`` seconds have passed."""

    def __init__(self, args: argparse.Namespace):
        from flowsr import FlowSRPipeline

        self.budget, self.backend, self.small = args.budget, args.backend, args.sizes[0]
        self.device = torch.device(args.device)
        self.pipe = FlowSRPipeline(build_model(args.model, self.device, merged=True))
        self.start = time.perf_counter()  # the budget is the table's: building the model is not in it
        self.regions, self.prepared, self.results, self.outputs = None, None, {}, {}

    def set_up(self, dtype: str, channels_last: bool, compiled: bool) -> None:
        from flowsr.devices import DTYPES

        if self.prepared == (dtype, channels_last, compiled):
            return
        if self.regions is not None:
            self.regions.remove()
            torch._dynamo.reset()  # a clean cache per compiled setting: recompile counts stay per setting
        self.regions = prepare(self.pipe.model, DTYPES[dtype], channels_last, compiled, self.backend)
        self.prepared = (dtype, channels_last, compiled)

    def measure(self, key: tuple, warmup: bool = True) -> dict:
        """``key``: (input side, scale, dtype, channels-last, compiled, tiles per call)."""
        side, scale, dtype, channels_last, compiled, batch = key
        if not self.time_left():
            return {"error": "skipped: the session's time budget was spent"}
        self.set_up(dtype, channels_last, compiled)
        # On the host, as the CLI holds images: the output is not in device memory, only the tiles' work is.
        image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
        options = dict(scale=scale, tile_size=GPU_TILE, tile_batch=batch)
        try:
            first = timed(self.pipe, image, options)[0] if warmup else float("nan")
            self.reset_peak()
            seconds, out = timed(self.pipe, image, options)
        except Exception as error:  # an out-of-memory configuration is a result, not the end of the session
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return {"error": f"{type(error).__name__}: {error}".splitlines()[0][:160]}
        if side == self.small and batch == 1:
            self.outputs[key] = out
        result = {"first": first, "seconds": seconds, "peak_mib": self.peak_mib()}
        self.results[key] = result
        return result

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float:
        """Device memory allocated at most since the reset; on the CPU (a check of the script) the peak RSS."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() / 2 ** 20
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024

    def time_left(self) -> bool:
        return time.perf_counter() - self.start < self.budget


def gpu_row(key: tuple, result: dict, baseline: dict) -> str:
    side, scale, dtype, channels_last, compiled, batch = key
    name = (f"| {side} -> {round(side * scale)} | {dtype} | {'compiled' if compiled else 'eager'} | {batch} | "
            f"{'on' if channels_last else 'off'} |")
    if "error" in result:
        return f"{name} {result['error']} | | | |"
    ratio = f"x{baseline['seconds'] / result['seconds']:.2f}" if "seconds" in baseline else ""
    return (f"{name} {result['seconds']:.3f} | {ratio} | {result['peak_mib'] / 1024:.2f} | "
            f"{result['first']:.1f} |")


def gpu_table(args: argparse.Namespace) -> None:
    """Eager rows first, then 1024 -> 8192 against 512 -> 2048, then the compiled rows, as the budget allows."""
    table = GpuTable(args)
    small, big = args.sizes
    name = torch.cuda.get_device_name() if table.device.type == "cuda" else "cpu (a check of the script only)"
    print(f"FlowSR on {name}, torch {torch.__version__}, model {args.model}, tiles of {GPU_TILE} latent pixels "
          f"(overlap automatic); speed-up against the fp32 eager one-tile-at-a-time baseline of this run; peak = "
          f"max allocated; first = the call before the timed one (compilation included)\n", flush=True)
    print(header(), flush=True)
    baseline_key = (small, 4.0, "fp32", False, False, 1)
    baseline = table.measure(baseline_key)
    print(gpu_row(baseline_key, baseline, baseline), flush=True)
    grid(table, small, False, baseline)
    print(f"\n{big} -> {big * 8} at the same tiles, its peak against {small} -> {small * 4}'s of the same settings "
          "(goal: within 10 %); no warm-up, so 'first' is empty\n", flush=True)
    print(header("peak / smaller's"), flush=True)
    for dtype, batch in (("bf16", 1), ("bf16", 4), ("fp32", 1)):
        key = (big, 8.0, dtype, False, False, batch)
        growth_row(table, key, baseline)
    print("\ncompiled (the first call of each setting compiles; tiles per call 2 recompiles the batch dimension "
          "as dynamic, 3 and 4 reuse it)\n", flush=True)
    print(header(), flush=True)
    grid(table, small, True, baseline)
    compiled = {k: r for k, r in table.results.items() if k[4] and k[0] == small}
    if compiled:
        fastest = min(compiled, key=lambda k: compiled[k]["seconds"])
        print(f"\nthe fastest compiled setting at {big} -> {big * 8} (its code is {small}'s: same tiles)\n")
        print(header("peak / smaller's"), flush=True)
        growth_row(table, (big, 8.0, *fastest[2:]), baseline)
    compiled_against_eager(table)
    print()
    sdpa_table(args.device, ("bf16", "fp16") if table.device.type == "cuda" else ("fp32",))


COLUMNS = ["size", "dtype", "mode", "tiles per call", "channels-last", "seconds", "speed-up", "peak GiB", "first s"]


def header(*extra: str) -> str:
    columns = COLUMNS + list(extra)
    return "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)


def grid(table: GpuTable, side: int, compiled: bool, baseline: dict) -> None:
    for dtype in ("bf16", "fp16"):
        for channels_last in (False, True):
            for batch in (1, 2, 3, 4):
                key = (side, 4.0, dtype, channels_last, compiled, batch)
                print(gpu_row(key, table.measure(key), baseline), flush=True)


def growth_row(table: GpuTable, key: tuple, baseline: dict) -> None:
    result = table.measure(key, warmup=False)
    smaller = table.results.get((table.small, 4.0, *key[2:]))
    growth = f" x{result['peak_mib'] / smaller['peak_mib']:.3f} |" if smaller and "peak_mib" in result else " |"
    print(gpu_row(key, result, baseline) + growth, flush=True)


def compiled_against_eager(table: GpuTable) -> None:
    """The largest difference, in grey levels of 8 bits, of each compiled output from its eager twin."""
    print("\ncompiled against eager, the smaller size, one tile per call: largest difference in 8-bit grey levels")
    for key, out in table.outputs.items():
        if key[4]:
            eager = table.outputs.get((*key[:4], False, key[5]))
            if eager is not None:
                levels = float((out - eager).abs().max()) * 255
                print(f"  {key[2]}, channels-last {'on' if key[3] else 'off'}: {levels:.3f}")


# --------------------------------------------------------------------------------------------- attention

#: (tokens of the query, tokens of the key, heads, head width) of SD 2.1's UNet on a 64x64-latent tile.
SD_ATTENTION = [(4096, 4096, 5, 64), (4096, 77, 5, 64), (1024, 1024, 10, 64), (256, 256, 20, 64)]


def sdpa_table(device: str, dtypes: tuple[str, ...]) -> None:
    """Milliseconds of each SDPA backend this device can run, and what PyTorch picks by itself."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    from flowsr.devices import DTYPES

    backends = {"default (PyTorch's pick)": None, "flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}
    if device == "cuda":
        backends.update(efficient=SDPBackend.EFFICIENT_ATTENTION, cudnn=SDPBackend.CUDNN_ATTENTION)
    print(f"attention (scaled_dot_product_attention) on {device}: ms per call at SD 2.1's shapes, 64-latent tile")
    print("| dtype | queries x keys, heads | " + " | ".join(backends) + " |\n|" + "---|" * (len(backends) + 2))
    for dtype in dtypes:
        for queries, keys, heads, width in SD_ATTENTION:
            q = torch.randn(1, heads, queries, width, device=device, dtype=DTYPES[dtype])
            k = torch.randn(1, heads, keys, width, device=device, dtype=DTYPES[dtype])
            cells = [_sdpa_ms(F.scaled_dot_product_attention, q, k, backend, sdpa_kernel)
                     for backend in backends.values()]
            print(f"| {dtype} | {queries} x {keys}, {heads} | " + " | ".join(cells) + " |", flush=True)


def _sdpa_ms(attention, q, k, backend, sdpa_kernel) -> str:
    import contextlib

    try:
        with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
            attention(q, k, k)
            if q.is_cuda:
                torch.cuda.synchronize()
            start, calls = time.perf_counter(), 0
            while time.perf_counter() - start < 0.2:
                attention(q, k, k)
                calls += 1
            if q.is_cuda:
                torch.cuda.synchronize()
        return f"{(time.perf_counter() - start) / calls * 1000:.2f}"
    except RuntimeError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("sd-random", "builtin", "sd-tiny"), default="builtin")
    parser.add_argument("--inputs", type=int, nargs="+", default=[256], help="input sides (output: 4x)")
    parser.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--sdpa", action="store_true", help="only the attention backends on the CPU")
    parser.add_argument("--gpu-table", action="store_true", help="the CUDA table of gpu_session.sh")
    parser.add_argument("--budget", type=float, default=400, help="seconds after which --gpu-table starts no row")
    parser.add_argument("--device", default="cuda", help="--gpu-table's device (cpu: a quick check of the script)")
    parser.add_argument("--sizes", type=int, nargs=2, default=[512, 1024],
                        help="--gpu-table's input sides, upscaled x4 and x8")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: a quick check)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
    elif args.gpu_table:
        args.model = "sd-random" if args.model == "builtin" and "--model" not in sys.argv else args.model
        gpu_table(args)
    elif args.sdpa:
        sdpa_table("cpu", tuple(args.dtypes))
    else:
        cpu_table(args)


if __name__ == "__main__":
    main()
