"""How soon Cancel takes effect and what its checks cost, measured in this run.

    python bench/bench_cancel.py                                      # built-in model, 768x576 at 4x, CPU
    python bench/bench_cancel.py --model sd-tiny --input 384x288      # SD 2.1's architecture at a few channels
    python bench/bench_cancel.py --cli                                # and Ctrl-C of `python -m flowsr upscale`

In this process: the upscale with automatic tiles without a cancel hook (no checks) and with one that never
cancels (a check before every layer of the networks), best of ``--repeat`` each: their ratio of CPU time is what
the checks cost. The largest gap between two polls is the longest Cancel can wait; it is named by the layer (or
"between calls") that followed the poll. The same with tiles off (``--untiled``), where one layer spans the image.

``--cli``: the command line upscales a PNG of that size; SIGINT (Ctrl-C) arrives 0.5 s and 3 s after its
pipeline started; printed: the seconds to its "interrupted" message and to its exit, and its exit code (130).
Python raises KeyboardInterrupt between two operations, so the wait is the operation under way, the job's
clean-up and the interpreter's exit.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_upscale import build_pipeline  # noqa: E402

#: Run as the command line, with the pipeline announcing on stderr when its upscale starts.
CLI_WITH_START_SIGNAL = """
import sys
import flowsr.pipeline
from flowsr.cli import main

original = flowsr.pipeline.FlowSRPipeline._upscale
def announced(self, *args, **kwargs):
    print("BENCH: upscale started", file=sys.stderr, flush=True)
    return original(self, *args, **kwargs)
flowsr.pipeline.FlowSRPipeline._upscale = announced
sys.exit(main(sys.argv[1:]))
"""


class PollTimes:
    """A cancel hook that never cancels and records when it was polled, and from where."""

    def __init__(self, model):
        self.names = {id(m): name or type(m).__name__ for network in (model.denoiser, model.autoencoder)
                      for name, m in network.named_modules()}
        self.polls: list[tuple[float, str]] = []

    def __call__(self) -> bool:
        caller = sys._getframe(2)  # Progress._before_layer(self, module, inputs), or the pipeline's own code
        layer = caller.f_locals.get("module")
        where = self.names.get(id(layer)) if layer is not None else f"{caller.f_code.co_name} (pipeline)"
        self.polls.append((time.perf_counter(), where))
        return False

    def largest_gaps(self, end: float, count: int = 3) -> list[tuple[float, str]]:
        stamps = self.polls + [(end, "the end")]
        gaps = [(later[0] - earlier[0], earlier[1]) for earlier, later in zip(stamps, stamps[1:])]
        return sorted(gaps, reverse=True)[:count]


def timed(pipe, image: torch.Tensor, options: dict, cancel=None) -> float:
    started = time.perf_counter()
    pipe.upscale_tensor(image, **options, cancel=cancel)
    return time.perf_counter() - started


def cpu_timed(pipe, image: torch.Tensor, options: dict, cancel=None) -> float:
    """CPU seconds of this process: less disturbed than wall time by other work on a shared machine."""
    started = time.process_time()
    pipe.upscale_tensor(image, **options, cancel=cancel)
    return time.process_time() - started


def in_process(args: argparse.Namespace) -> None:
    pipe = build_pipeline(args.model, "cpu", "fp32")
    width, height = args.input
    image = torch.rand(1, 3, height, width)
    options = dict(scale=args.scale)
    print(f"{args.model}, {width}x{height} at {args.scale:g}x, CPU, {torch.get_num_threads()} threads; "
          f"automatic tiling: {pipe._tiling((height * round(args.scale), width * round(args.scale)), None, None, None)}")
    plain, checked = [], []
    for _ in range(args.repeat):  # alternated, so that a change in the machine's load hits both alike
        plain.append(cpu_timed(pipe, image, options))
        checked.append(cpu_timed(pipe, image, options, cancel=lambda: False))
    print(f"  CPU seconds, best of {args.repeat}: no checks {min(plain):.2f}, checks before every layer "
          f"{min(checked):.2f}: x{min(checked) / min(plain):.3f}")
    layouts = [("automatic tiles", options)] + ([("untiled", {**options, "tile_size": 0})] if args.untiled else [])
    for label, layout in layouts:
        polls = PollTimes(pipe.model)
        seconds = timed(pipe, image, layout, cancel=polls)
        gaps = ", ".join(f"{gap:.3f} s after the poll in {where}" for gap, where in polls.largest_gaps(time.perf_counter()))
        print(f"  {label}: {seconds:.2f} s, {len(polls.polls)} polls; largest gaps: {gaps}")


def per_layer_cost(layers: int = 1000, repeat: int = 200) -> None:
    """The host time one check adds to a layer: what it costs where layers are short (a GPU's host thread)."""
    from torch import nn

    from flowsr.progress import Progress

    network, x = nn.Sequential(*(nn.Identity() for _ in range(layers))), torch.zeros(1)

    def forward_seconds() -> float:
        started = time.process_time()
        for _ in range(repeat):
            network(x)
        return time.process_time() - started

    plain = forward_seconds()
    with Progress(0, None, lambda: False).checked_inside([network]):
        checked = forward_seconds()
    print(f"  one check adds {(checked - plain) / (layers * repeat) * 1e6:.1f} us of CPU time to a layer "
          f"(an empty layer alone: {plain / (layers * repeat) * 1e6:.1f} us)")


def command_line(args: argparse.Namespace) -> None:
    from PIL import Image

    width, height = args.input
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "input.png"
        Image.effect_noise((width, height), 64).convert("RGB").save(source)
        for after in (0.5, 3.0):
            command = [sys.executable, "-c", CLI_WITH_START_SIGNAL, "upscale", str(source), "-o",
                       str(Path(folder) / "out.png"), "--scale", f"{args.scale:g}"]
            process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            for line in process.stderr:
                if "BENCH: upscale started" in line:  # after the job bar's first frame
                    break
            time.sleep(after)
            sent = time.perf_counter()
            process.send_signal(signal.SIGINT)
            said = next((time.perf_counter() for line in process.stderr if "flowsr: interrupted" in line), None)
            process.stderr.read()
            code = process.wait()
            stopped = "no message" if said is None else f"said it was interrupted {said - sent:.2f} s later"
            print(f"  command line, Ctrl-C {after} s into the upscale: {stopped}, exited "
                  f"{time.perf_counter() - sent:.2f} s later with {code}")


def size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin", choices=["builtin", "tiny-random", "sd-tiny", "sd-random"])
    parser.add_argument("--input", type=size, default=(768, 576), help="WIDTHxHEIGHT of the input")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--untiled", action="store_true", help="also measure the gaps with tiles off")
    parser.add_argument("--cli", action="store_true", help="also time Ctrl-C of the command line")
    args = parser.parse_args()
    per_layer_cost()
    in_process(args)
    if args.cli:
        command_line(args)


if __name__ == "__main__":
    main()
