"""Speed and memory of the pipeline, printed as ratios (machines are noisy; ratios travel).

    python bench/bench_upscale.py --model sd-random --device cuda --input 512 --scale 4     # 512 -> 2048
    python bench/bench_upscale.py --model builtin --input 256 --scale 4                      # CPU, 256 -> 1024
    python bench/bench_upscale.py --streaming                                                # CPU: memory, batches

``--streaming`` prints what the streaming pipeline promises, each as a ratio measured in this run: peak RSS of a
1024^2 against a 4096^2 output (SD 2.1-shaped tiny networks, fp32, 32-latent tiles, 8-bit output as the CLI
writes it), peak RSS and time of 2048^2 -> 8192^2 with the built-in model, per-frame time of a 16-frame batch
against one frame at a time, and automatic tiles against none for 256 -> 1024.

On CUDA every measurement runs in this process (peak = max allocated since a reset); on the CPU each runs in
a fresh process so that its peak RSS is its own. Models: ``sd-random`` (SD 2.1-base at full width, random weights: speed does not depend on values),
``builtin`` (the shipped small model), ``tiny-random`` (the small architecture, random weights), ``sd-tiny``
(SD 2.1's UNet and VAE classes at a few channels, random weights: the shape of the work, not its cost).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    elif model == "sd-tiny":
        network = sd_tiny()
    elif model == "sd-stub":
        network = sd_stub()
    else:
        return FlowSRPipeline.from_pretrained(device=device_, dtype=dtype_)
    return FlowSRPipeline(network.to(device_, dtype_))


def sd_stub():
    """SD's latent shape (4 channels at 1/8) with networks of one convolution each: the pipeline's own memory."""
    from torch import nn
    import torch.nn.functional as F

    from flowsr.models.base import FlowSRModel

    class SDShapedStub(FlowSRModel):
        def __init__(self):
            super().__init__()
            self.autoencoder = nn.ModuleDict({"encoder": nn.Conv2d(3, 4, 1), "norm": nn.GroupNorm(1, 4),
                                              "decoder": nn.Conv2d(4, 3, 1)})
            self.denoiser = nn.Conv2d(4, 4, 1)

        def encode(self, pixels, generator=None):
            return self.autoencoder["norm"](self.autoencoder["encoder"](F.avg_pool2d(pixels, 8)))

        def decode(self, latent):
            return F.interpolate(self.autoencoder["decoder"](latent), scale_factor=8.0, mode="nearest")

        def velocity(self, x_t, t):
            return self.denoiser(x_t) * 0.1
    return SDShapedStub()


def sd_tiny():
    """SD 2.1's architecture classes (cross-attention UNet, 8x KL VAE with GroupNorms) at a few channels."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from flowsr.models.sd import SDFlowSRModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4, sample_size=64)
    return SDFlowSRModel(unet, vae, torch.randn(1, 77, 32))


def reference_style(pipe, image: torch.Tensor, scale: float, tile: int, overlap: int) -> torch.Tensor:
    """The public re-implementation's shape of work: untiled VAE, velocity tiles one at a time."""
    import torch.nn.functional as F

    from flowsr import flow
    from flowsr.image_rules import output_size
    from flowsr.tiling import Band, TilePlan, Tiling

    model = pipe.model
    height, width = output_size(image.shape[-2], image.shape[-1], scale)
    x = F.interpolate(image.to(model.device), size=(height, width), mode="bilinear", align_corners=False) * 2 - 1
    x = F.pad(x, (0, -width % model.pad_multiple, 0, -height % model.pad_multiple), mode="reflect")
    z = model.encode(x.to(model.dtype)).float()
    plan = TilePlan(tuple(z.shape[-2:]), 1, Tiling(tile, overlap), passes=1)
    band, weights, t = Band(1, z.shape[1], z.shape[-1]), plan.weights().to(model.device), torch.ones(1)
    for (tile_,) in plan.groups:
        v = model.velocity(z[:, :, tile_.rows, tile_.cols], t.to(model.device)).float()
        band.add(0, tile_.rows, tile_.cols, v[0].cpu(), weights.cpu())
    return model.decode(flow.euler_step(z, band.pop(z.shape[-2]).to(model.device), 1.0, 0.0).to(model.dtype))


def measure(args: argparse.Namespace, pipe=None) -> dict:
    """One configuration, in this process: seconds (best of ``--repeat`` after a warm-up) and peak memory."""
    torch.manual_seed(0)
    if pipe is None:
        pipe = build_pipeline(args.model, args.device, args.dtype)
    device = pipe.model.device
    image = torch.rand(args.frames, 3, args.input, args.input)
    if args.uint8:  # as the CLI hands images over: 8-bit in, 8-bit out
        image = (image.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    options = dict(scale=args.scale, steps=args.steps, tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                   tile_batch=args.tile_batch, color_fix="wavelet")

    def run() -> None:
        with torch.no_grad():
            if args.reference_style:
                reference_style(pipe, image, args.scale, args.tile_size or 96, args.tile_overlap or 32)
            elif args.one_by_one:
                for frame in image:
                    pipe.upscale(frame[None], **options)
            else:
                pipe.upscale(image, **options)
        if device.type == "cuda":
            torch.cuda.synchronize()

    if args.warmup:
        run()  # kernels, allocator, lazy imports
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
    return {"seconds": min(times) / args.frames, "peak_mib": peak, "device": torch.cuda.get_device_name() if device.type == "cuda"
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
            elif value is False:
                argv.append("--no-" + flag[2:])
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
    parser.add_argument("--model", choices=("sd-random", "builtin", "tiny-random", "sd-tiny", "sd-stub"), default="builtin")
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
    parser.add_argument("--frames", type=int, default=1, help="images per batch (seconds are per image)")
    parser.add_argument("--one-by-one", action="store_true", help="upscale the frames one call each")
    parser.add_argument("--uint8", action="store_true", help="8-bit numpy in and out, as the CLI does")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--streaming", action="store_true", help="the streaming and batch ratios (see above)")
    parser.add_argument("--reference-style", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args)))
        return

    if args.streaming:
        streaming(parser, args)
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

    print("\n-- print sizes at the same tiles: device memory follows the tile, not the image --")
    print_size = run(input=size, tile_size=64)
    report(f"{size} -> {out} tiled 64", print_size)
    report(f"{2 * size} -> {4 * out} tiled 64", run(input=2 * size, scale=2 * args.scale, tile_size=64), print_size)

    print("\n-- against the reference implementation's way (fp32, 96-latent tiles one at a time, untiled VAE) --")
    reference = run(["--dtype", "fp32"], input=size, tile_size=96, tile_overlap=32,
                              reference_style=True)
    report("reference-style fp32", reference)
    report(f"ours, auto tiling, dtype {args.dtype}", one, reference)


def streaming(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Host memory against output size, print sizes, batches, and automatic tiles on the CPU (#10)."""
    common = ["--device", "cpu", "--dtype", "fp32", "--scale", "4"]
    print("FlowSR streaming benchmark on the CPU (each run in a fresh process; seconds are per image)")

    print("\n-- peak RSS against output size: sd-tiny, fp32, tile 32, overlap 8, 8-bit in and out --")
    sd = Runner(parser, common + ["--model", "sd-tiny", "--tile-size", "32", "--tile-overlap", "8", "--uint8",
                                  "--repeat", "1"])
    small = sd(input=256)
    report("256 -> 1024", small)
    report("1024 -> 4096 (16x the pixels)", sd(input=1024, warmup=False), small)
    stub = Runner(parser, common + ["--model", "sd-stub", "--tile-size", "32", "--tile-overlap", "8", "--uint8",
                                    "--repeat", "1"])
    print("   the same with one-convolution networks (the pipeline's own buffers, minutes instead of hours):")
    small = stub(input=256)
    report("256 -> 1024, sd-stub", small)
    report("1024 -> 4096, sd-stub", stub(input=1024, warmup=False), small)
    report("2048 -> 8192, sd-stub", stub(input=2048, warmup=False), small)

    print("\n-- a print size: built-in model, automatic tiles, 8-bit in and out --")
    builtin = Runner(parser, common + ["--model", "builtin", "--uint8"])
    report("2048 -> 8192", builtin(input=2048, repeat=1, warmup=False))

    print("\n-- a 16-frame batch of 256^2 against one frame at a time: built-in model, automatic tiles --")
    alone = builtin(input=256, frames=16, one_by_one=True, repeat=1)
    report("one frame per call", alone)
    report("16 frames in one batch", builtin(input=256, frames=16, repeat=1), alone)

    print("\n-- 256 -> 1024: automatic tiles against none --")
    untiled = builtin(input=256, tile_size=0, repeat=3)
    report("untiled", untiled)
    report("automatic", builtin(input=256, repeat=3), untiled)


if __name__ == "__main__":
    main()
