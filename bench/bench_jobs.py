"""Folder throughput of `flowsr upscale` on 1 and on N processes (torchrun), and the command line's start-up.

Prints, from one run on this machine: images/s for one process (with all the cores' threads, and with one
process's share of them) and for N processes, their ratios, and for one
256x256 image at x4: the wall time of the command (start-up + model load + work), of start-up + model load
alone (the command on an 8x8 image, whose upscale costs next to nothing), and of the upscale in-process with
the model loaded.

    python bench/bench_jobs.py [--images 32] [--size 128] [--scale 4] [--processes 2]

With CUDA, each process takes its own GPU (cuda:LOCAL_RANK). On the CPU each of the N processes gets
cores/N threads, so both runs use the same cores.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STARTUP_SIZE = 256


def write_folder(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    generator = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(generator.integers(0, 255, (size, size, 3), np.uint8)).save(folder / f"{index:04d}.png")


def timed(command: list[str], env: dict) -> tuple[float, float, float]:
    """(wall seconds of the command, seconds of the job itself from the summary process 0 prints, CPU seconds
    of the command and its children: on a shared machine the CPU time says more than the wall time)."""
    cpu_before = _children_cpu()
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, check=True, stdout=subprocess.PIPE,
                              text=True)
    wall = time.perf_counter() - start
    job = re.search(r" in ([0-9.]+) s \(", finished.stdout)
    return wall, float(job.group(1)) if job else float("nan"), _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rates(label: str, count: int, seconds: tuple[float, float]) -> str:
    return (f"{label}: {count / seconds[0]:6.2f} images/s whole command ({seconds[0]:.1f} s), "
            f"{count / seconds[1]:6.2f} images/s once loaded ({seconds[1]:.1f} s)")


def upscale_command(source: Path, output: Path, scale: float, extra=()) -> list[str]:
    return ["-m", "flowsr", "upscale", str(source), "-o", str(output), "--scale", str(scale), *extra]


def in_process_seconds(size: int, scale: float) -> tuple[float, float]:
    """(wall, CPU) seconds of one upscale with the built-in model loaded."""
    sys.path.insert(0, str(REPO))
    import flowsr

    pipe = flowsr.FlowSRPipeline.from_pretrained()
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (size, size, 3), np.uint8))
    pipe.upscale(image, scale=scale)  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    pipe.upscale(image, scale=scale)
    return time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "in"
        write_folder(folder, args.images, args.size)
        one = timed([sys.executable, *upscale_command(folder, Path(work) / "one", args.scale)],
                    {"OMP_NUM_THREADS": str(cores)})
        one_thread = timed([sys.executable, *upscale_command(folder, Path(work) / "one_thread", args.scale)],
                           {"OMP_NUM_THREADS": str(max(1, cores // args.processes))})
        many = timed([sys.executable, "-m", "torch.distributed.run", "--standalone",
                      f"--nproc_per_node={args.processes}",
                      *upscale_command(folder, Path(work) / "many", args.scale)],
                     {"OMP_NUM_THREADS": str(max(1, cores // args.processes))})
        write_folder(Path(work) / "one_image", 1, STARTUP_SIZE)
        write_folder(Path(work) / "tiny_image", 1, 8)
        command = timed([sys.executable, *upscale_command(Path(work) / "one_image", Path(work) / "x", 4)], {})
        loading = timed([sys.executable, *upscale_command(Path(work) / "tiny_image", Path(work) / "y", 4)], {})
    print(f"{args.images} images {args.size}x{args.size} -> x{args.scale:g}, {cores} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(rates(f"1 process, {cores} threads", args.images, one))
    print(rates(f"1 process, {max(1, cores // args.processes)} threads", args.images, one_thread))
    print(rates(f"{args.processes} processes", args.images, many))
    print(f"ratio {args.processes} processes / 1 process with all threads: {one[0] / many[0]:.2f}x whole command, "
          f"{one[1] / many[1]:.2f}x once loaded; / 1 process with a process's share of the threads: "
          f"{one_thread[0] / many[0]:.2f}x, {one_thread[1] / many[1]:.2f}x")
    in_process = in_process_seconds(STARTUP_SIZE, 4)
    print(f"{STARTUP_SIZE} -> {4 * STARTUP_SIZE}, wall (CPU) seconds: command line {command[0]:.1f} "
          f"({command[2]:.1f}); start-up and model load, the command on an 8x8 image {loading[0]:.1f} "
          f"({loading[2]:.1f}); in-process with the model loaded {in_process[0]:.2f} ({in_process[1]:.2f})")


if __name__ == "__main__":
    main()
