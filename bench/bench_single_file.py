"""Loading a single-file SD 2.1 checkpoint: our key map against diffusers' ``from_single_file``, memory and time.

    python bench/bench_single_file.py --file /tmp/sd21-random.safetensors                 # this Python
    python bench/bench_single_file.py --file /tmp/sd21.safetensors --python /tmp/compat/bin/python --delete

Writes (once, tensor by tensor) a full-size SD 2.1-base-shaped file in the original LDM layout with random
fp32 weights (5.2 GB: the UNet, the VAE and OpenCLIP's 24-block text tower, as v2-1_512-ema-pruned is), then
loads it in a fresh process per way, one after the other, and prints peak memory and seconds:

- ``ours``: ``flowsr.models.single_file.load_single_file_components`` (UNet, VAE and text encoder);
- ``diffusers-parts``: ``UNet2DConditionModel.from_single_file`` + ``AutoencoderKL.from_single_file``;
- ``diffusers-pipeline``: ``StableDiffusionPipeline.from_single_file`` (all parts, the text encoder included).

Seconds are the load call's; then one value per memory page of every weight is read, because safetensors
may leave weights memory-mapped until first used. Peak memory is then the process's peak resident set
(``ru_maxrss``, which counts the file's mapped pages too) and the peak of its anonymous memory (``RssAnon``,
sampled every 5 ms), which is what cannot be given back to the page cache.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAYS = ("ours", "diffusers-parts", "diffusers-pipeline")
GIB = 1024 ** 3


# --------------------------------------------------------------------------------------------- the file

def ldm_shapes() -> dict:
    """LDM name -> shape of every tensor in an SD 2.1-base single file, from the shipped configs."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from flowsr.families import SD21_BASE
    from flowsr.models.single_file import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, unet_sources
    from tests.ldm_layout import ldm_unet_key, ldm_vae_key

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD21_BASE.config_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD21_BASE.config_dir / "vae"))
    layers = unet.config.layers_per_block
    attention_up = [kind.startswith("CrossAttn") for kind in unet.config.up_block_types]
    shapes = {UNET_PREFIX + ldm_unet_key(name, layers, attention_up): tuple(p.shape)
              for name, p in unet.state_dict().items()}
    assert set(unet_sources(shapes, layers)) == set(unet.state_dict()), "the inverse UNet names are wrong"
    levels = len(vae.config.block_out_channels)
    for name, p in vae.state_dict().items():
        linear_attention = ".attentions." in name and name.endswith("weight") and p.dim() == 2
        shapes[VAE_PREFIX + ldm_vae_key(name, levels)] = tuple(p.shape) + ((1, 1) if linear_attention else ())
    width, blocks = 1024, 24  # OpenCLIP ViT-H/14's text tower; SD 2.x uses 23 of its 24 blocks
    text = {"token_embedding.weight": (49408, width), "positional_embedding": (77, width),
            "ln_final.weight": (width,), "ln_final.bias": (width,), "text_projection": (width, width),
            "logit_scale": ()}
    for i in range(blocks):
        block = f"transformer.resblocks.{i}."
        text.update({block + "ln_1.weight": (width,), block + "ln_1.bias": (width,),
                     block + "attn.in_proj_weight": (3 * width, width), block + "attn.in_proj_bias": (3 * width,),
                     block + "attn.out_proj.weight": (width, width), block + "attn.out_proj.bias": (width,),
                     block + "ln_2.weight": (width,), block + "ln_2.bias": (width,),
                     block + "mlp.c_fc.weight": (4 * width, width), block + "mlp.c_fc.bias": (4 * width,),
                     block + "mlp.c_proj.weight": (width, 4 * width), block + "mlp.c_proj.bias": (width,)})
    shapes.update({TEXT_PREFIX + name: shape for name, shape in text.items()})
    return shapes


def write_random_file(path: Path) -> None:
    """Stream a safetensors file of small random fp32 values, one tensor in memory at a time."""
    import torch

    shapes = ldm_shapes()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        size = 4 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    generator = torch.Generator().manual_seed(0)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for shape in shapes.values():
            f.write((torch.randn(shape, generator=generator) * 0.02).numpy().tobytes())
    partial.rename(path)


# --------------------------------------------------------------------------------------------- one way

class AnonPeak:
    """The peak of this process's anonymous resident memory, sampled in a thread."""

    def __init__(self, interval: float = 0.005):
        self.peak, self.interval, self.running = 0, interval, True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while self.running:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            time.sleep(self.interval)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def config_folder(work: Path) -> Path:
    """The shipped configs plus what a pipeline-level load wants (model_index.json, a scheduler)."""
    import shutil

    from flowsr.families import SD21_BASE

    folder = work / "sd21-pipeline-config"
    if not folder.exists():
        shutil.copytree(SD21_BASE.config_dir, folder)
        (folder / "scheduler").mkdir()
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
            "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
            "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}))
        (folder / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline", "requires_safety_checker": False,
            "feature_extractor": [None, None], "safety_checker": [None, None],
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}))
    return folder


def load(way: str, path: Path) -> list:
    """Load ``path`` the given way; returns the parts built (kept alive until measured)."""
    from flowsr.families import SD21_BASE

    if way == "ours":
        from flowsr.models.single_file import load_single_file_components
        return list(load_single_file_components(path))[:3]  # the tokenizer holds no weights
    options = dict(local_files_only=True)
    if way == "diffusers-parts":
        from diffusers import AutoencoderKL, UNet2DConditionModel
        return [UNet2DConditionModel.from_single_file(str(path), config=str(SD21_BASE.config_dir), subfolder="unet",
                                                      **options),
                AutoencoderKL.from_single_file(str(path), config=str(SD21_BASE.config_dir), subfolder="vae", **options)]
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config_folder(path.parent)),
                                                    safety_checker=None, **options)
    return [pipe.unet, pipe.vae, pipe.text_encoder]


def touch(parameter) -> int:
    """Read one value per memory page: weights left memory-mapped by the loader become resident, as they are
    when the model first runs, so every way is measured with its weights in memory."""
    flat = parameter.detach().reshape(-1)
    flat[::1024].sum().item()
    return flat.numel()


def measure(way: str, path: Path) -> dict:
    import diffusers
    import torch
    import transformers

    anon = AnonPeak()
    start = time.perf_counter()
    try:
        parts = load(way, path)
        error = None
    except Exception as failure:  # a way this diffusers version cannot do is reported, not fatal
        parts, error = [], f"{type(failure).__name__}: {str(failure)[:300]}"
    seconds = time.perf_counter() - start
    parameters = sum(touch(p) for part in parts for p in part.parameters())
    peak_anon = anon.stop()
    return {"way": way, "seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_anon": peak_anon, "parameters": parameters, "parts": [type(p).__name__ for p in parts],
            "error": error, "versions": f"diffusers {diffusers.__version__}, transformers "
                                        f"{transformers.__version__}, torch {torch.__version__}"}


# --------------------------------------------------------------------------------------------- driver

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, required=True, help="the random single file (written if missing)")
    parser.add_argument("--python", action="append", help="interpreters to measure under (default: this one)")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--delete", action="store_true", help="delete the file at the end")
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        print(json.dumps(measure(args.child, args.file)))
        return
    if not args.file.exists():
        start = time.perf_counter()
        write_random_file(args.file)
        print(f"wrote {args.file}: {args.file.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s")
    try:
        for python in args.python or [sys.executable]:
            results = [run_child(python, way, args.file) for way in args.ways]
            report(python, results)
    finally:
        if args.delete:
            args.file.unlink()


def run_child(python: str, way: str, path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([python, __file__, "--file", str(path), "--child", way], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        return {"way": way, "error": f"exit {done.returncode}: {done.stderr.strip()[-400:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(python: str, results: list) -> None:
    versions = next((r["versions"] for r in results if "versions" in r), "")
    print(f"\n{python} ({versions})")
    print(f"{'way':20} {'seconds':>8} {'peak RSS GiB':>13} {'peak anon GiB':>14} {'parameters':>14}  parts")
    ours = next((r for r in results if r["way"] == "ours" and not r.get("error")), None)
    for r in results:
        if r.get("error"):
            print(f"{r['way']:20} failed: {r['error']}")
            continue
        print(f"{r['way']:20} {r['seconds']:8.1f} {r['peak_rss'] / GIB:13.2f} {r['peak_anon'] / GIB:14.2f} "
              f"{r['parameters']:14,}  {', '.join(r['parts'])}")
    for r in results:
        if ours and r is not ours and not r.get("error"):
            print(f"{r['way']} / ours: time {r['seconds'] / ours['seconds']:.2f}x, peak RSS "
                  f"{r['peak_rss'] / ours['peak_rss']:.2f}x, peak anon {r['peak_anon'] / ours['peak_anon']:.2f}x")


if __name__ == "__main__":
    main()
