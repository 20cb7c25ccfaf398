"""Speed and memory of the pipeline, printed as ratios (machines are noisy; ratios travel).

    python bench/bench_upscale.py --model sd-random --device cuda --input 512 --scale 4     # 512 -> 2048
    python bench/bench_upscale.py --model builtin --input 256 --scale 4                      # CPU, 256 -> 1024

On CUDA every measurement runs in this process (peak = max allocated since a reset); on the CPU each runs in
a fresh process so that its peak RSS is its own. Models: ``sd-random`` (SD 2.1-base at full width, random weights: speed does not depend on values),
``builtin`` (the shipped small model), ``tiny-random`` (the small architecture, random weights).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_pipeline(model: str, device: str, dtype: str):
    from flowsr import FlowSRPipeline
    from flowsr.devices import resolve_device, resolve_dtype

    device_ = resolve_device(device)
    dtype_ = resolve_dtype(dtype, device_)
    if model == "sd-random":
        from flowsr.models.sd import SDFlowSRModel
        with device_:  # random init straight on the device: seconds instead of a minute on the CPU
            network = SDFlowSRModel.from_configs()
    elif model == "tiny-random":
        from flowsr.models.tiny import TinyFlowSR
        network = TinyFlowSR()
    else:
        return FlowSRPipeline.from_pretrained(device=device_, dtype=dtype_)
    return FlowSRPipeline(network.to(device_, dtype_))


def reference_style(pipe, image: torch.Tensor, scale: float, tile: int, overlap: int) -> torch.Tensor:
    """The public re-implementation's shape of work: untiled VAE, velocity tiles one at a time."""
    import torch.nn.functional as F

    from flowsr import flow
    from flowsr.pipeline import output_size, pad_to_multiple
    from flowsr.tiling import tiled_map

    model = pipe.model
    size = output_size(image.shape[-2], image.shape[-1], scale)
    x = F.interpolate(image.to(model.device), size=size, mode="bilinear", align_corners=False) * 2 - 1
    z = model.encode(pad_to_multiple(x, model.pad_multiple).to(model.dtype)).float()
    t = torch.ones(1, device=model.device)
    v = tiled_map(lambda chunk: model.velocity(chunk.to(model.dtype), t).float(), z, tile=tile, overlap=overlap)
    return model.decode(flow.euler_step(z, v, 1.0, 0.0).to(model.dtype))


def measure(args: argparse.Namespace, pipe=None) -> dict:
    """One configuration, in this process: seconds (best of ``--repeat`` after a warm-up) and peak memory."""
    torch.manual_seed(0)
    if pipe is None:
        pipe = build_pipeline(args.model, args.device, args.dtype)
    device = pipe.model.device
    image = torch.rand(1, 3, args.input, args.input)
    options = dict(scale=args.scale, steps=args.steps, tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                   tile_batch=args.tile_batch, color_fix="wavelet")

    def run() -> None:
        with torch.no_grad():
            if args.reference_style:
                reference_style(pipe, image, args.scale, args.tile_size or 96, args.tile_overlap or 32)
            else:
                pipe.upscale_tensor(image, **options)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up: kernels, allocator, lazy imports
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    return {"seconds": min(times), "peak_mib": peak, "device": torch.cuda.get_device_name() if device.type == "cuda"
            else "cpu", "dtype": str(pipe.model.dtype).removeprefix("torch.")}


class Runner:
    """Runs one configuration: in this process on CUDA (one model, cast as asked), else in a fresh process."""

    def __init__(self, parser: argparse.ArgumentParser, base: list[str]):
        self.parser, self.base, self.pipe = parser, base, None

    def __call__(self, extra: list[str] = (), **overrides) -> dict:
        argv = self.base + list(extra)
        for key, value in overrides.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not None:
                argv += [flag, str(value)]
        args = self.parser.parse_args(argv)
        if not torch.cuda.is_available() or args.device == "cpu":
            return in_subprocess(argv)
        from flowsr.devices import resolve_dtype

        if self.pipe is None:
            self.pipe = build_pipeline(args.model, args.device, args.dtype)
        self.pipe.model.to(resolve_dtype(args.dtype, self.pipe.model.device))
        try:
            return measure(args, self.pipe)
        except Exception as error:  # an out-of-memory baseline is a result, not a crash
            torch.cuda.empty_cache()
            return {"error": f"{type(error).__name__}: {error}".splitlines()[0][:200]}


def in_subprocess(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", *argv], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(name: str, result: dict, baseline: dict | None = None) -> None:
    if "error" in result:
        print(f"{name:<44} failed: {result['error']}")
        return
    ratio = ""
    if baseline and "error" not in baseline:
        ratio = (f"  time x{result['seconds'] / baseline['seconds']:.2f}"
                 f"  memory x{result['peak_mib'] / baseline['peak_mib']:.2f}")
    print(f"{name:<44} {result['seconds']:8.2f} s  {result['peak_mib']:9.0f} MiB{ratio}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("sd-random", "builtin", "tiny-random"), default="builtin")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--input", type=int, default=256, help="input side in pixels")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--tile-overlap", type=int, default=None)
    parser.add_argument("--tile-batch", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--growth", type=int, nargs="*", default=None,
                        help="input sides for the tiled-vs-untiled memory sweep (default: input/2, input)")
    parser.add_argument("--reference-style", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args)))
        return

    base = ["--model", args.model, "--device", args.device, "--dtype", args.dtype, "--scale", str(args.scale),
            "--repeat", str(args.repeat)]
    run = Runner(parser, base)
    size = args.input
    out = round(size * args.scale)
    print(f"FlowSR benchmark: model {args.model}, {size} -> {out} px, device {args.device}, dtype {args.dtype}")

    print("\n-- steps (auto tiling) --")
    one = run(input=size)
    report("1 step", one)
    report("4 steps", run(input=size, steps=4), one)

    print("\n-- tiles per call (tile 64) --")
    single = run(input=size, tile_size=64, tile_batch=1)
    report("one tile at a time", single)
    report("4 tiles per call", run(input=size, tile_size=64, tile_batch=4), single)

    print("\n-- image growth: untiled vs tiled (tile 64) --")
    for side in args.growth or [size // 2, size]:
        untiled = run(input=side, tile_size=0)
        report(f"{side} -> {round(side * args.scale)} untiled", untiled)
        report(f"{side} -> {round(side * args.scale)} tiled 64", run(input=side, tile_size=64), untiled)

    print("\n-- against the reference implementation's way (fp32, 96-latent tiles one at a time, untiled VAE) --")
    reference = run(["--dtype", "fp32"], input=size, tile_size=96, tile_overlap=32,
                              reference_style=True)
    report("reference-style fp32", reference)
    report(f"ours, auto tiling, dtype {args.dtype}", one, reference)


if __name__ == "__main__":
    main()
