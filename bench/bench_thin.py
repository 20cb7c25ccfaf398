"""Peak memory and time of a thin image against a square one, each in a fresh process (peak RSS is per process).

    python bench/bench_thin.py [--scale 4]

Prints, for 4000x8, 8x4000 and 256x256 inputs, the peak RSS above the loaded model and the seconds, and the
thin images' ratios to the square one (run on an idle machine: times are wall-clock).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SIZES = ((4000, 8), (8, 4000), (256, 256))
CHILD = """
import json, resource, sys, time
import numpy as np
import flowsr
width, height, scale = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
pipe = flowsr.FlowSRPipeline.from_pretrained()
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = np.random.RandomState(0).randint(0, 255, (height, width, 3), np.uint8)
start = time.perf_counter()
pipe.upscale(image, scale=scale)
seconds = time.perf_counter() - start
print(json.dumps(dict(extra_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - loaded) / 1024, seconds=seconds)))
"""


def measure(width: int, height: int, scale: float) -> dict:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", CHILD, str(width), str(height), str(scale)], cwd=root,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=4.0, help="upscale factor (default 4)")
    args = parser.parse_args()
    results = {size: measure(*size, args.scale) for size in SIZES}
    square = results[SIZES[-1]]
    for (width, height), result in results.items():
        print(f"{width}x{height} x{args.scale:g}: peak RSS +{result['extra_mb']:.0f} MB "
              f"({result['extra_mb'] / square['extra_mb']:.2f}x the square's), {result['seconds']:.1f} s "
              f"({result['seconds'] / square['seconds']:.2f}x)")


if __name__ == "__main__":
    main()
