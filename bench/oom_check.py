"""Out-of-memory back-off on a real GPU: cap this process's share of the card, ask for an untiled upscale
that cannot fit, and check that the pipeline retries with tiles and finishes.

    python bench/oom_check.py --fraction 0.08 --input 512     # SD 2.1 architecture, random weights
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowsr import FlowSRPipeline  # noqa: E402
from flowsr.models.sd import SDFlowSRModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=0.08, help="share of GPU memory this process may use")
    parser.add_argument("--input", type=int, default=512)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    args = parser.parse_args()
    torch.cuda.set_per_process_memory_fraction(args.fraction)
    cap = args.fraction * torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    with torch.device("cuda"):
        model = SDFlowSRModel.from_configs()
    pipe = FlowSRPipeline(model.to(dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32))
    totals = []
    start = time.perf_counter()
    out = pipe.upscale_tensor(torch.rand(1, 3, args.input, args.input), tile_size=0,
                              progress=lambda done, total: totals.append(total))
    torch.cuda.synchronize()
    retried = len(set(totals)) > 1
    print(f"capped at {cap:.1f} GiB: untiled {args.input} -> {out.shape[-1]} finished in "
          f"{time.perf_counter() - start:.1f} s, peak {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB, "
          f"{'backed off to tiles' if retried else 'no retry was needed'} (network calls planned: "
          f"{sorted(set(totals))})")


if __name__ == "__main__":
    main()
