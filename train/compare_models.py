"""Held-out comparison of FlowSR models, other upscalers, bicubic and Lanczos, on clean and mildly degraded LR.

    python -m train.compare_models --hr data/photos_sa/test \\
        --model "stage 1, 1 step=runs/tiny_stage1/flowsr.safetensors@1" \\
        --model "distilled, 1 step=runs/tiny_stage2/flowsr.safetensors@1" \\
        --upscaler "esrgan-thick=bash peer_esrgan.sh {lr} {out} esrgan-thick"

LR images are made from the HR photos here (``train.held_out``: bicubic, mild, and with ``--lr-kinds`` also
Real-ESRGAN), so every method sees the same inputs. ``--upscaler NAME=COMMAND`` scores any other program in
the same run: COMMAND is run once per LR kind with ``{lr}`` replaced by a folder of LR PNGs and ``{out}`` by
a folder where it must write ``<name>.png`` at the scale. Prints a Markdown table of mean PSNR-Y / SSIM-Y
(and SSIMULACRA2 when installed), how many photos beat bicubic in PSNR-Y, and with ``--seams`` the PSNR
between tiled and untiled outputs of the first model.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from flowsr import FlowSRPipeline
from flowsr.errors import FlowSRError

from .evaluate import evaluate_pairs, format_value, load_rgb
from .held_out import LR_KINDS, load_hr_images, make_lr_sets, save_png
from .metrics import psnr_y

#: Upscales every LR image of one kind: ({name: uint8 LR}, HR size of each) -> {name: PIL image}.
Upscaler = Callable[[dict[str, torch.Tensor], dict[str, tuple[int, int]]], dict[str, Image.Image]]


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def parse_model(text: str) -> tuple[str, Path, int]:
    name, _, target = text.partition("=")
    path, _, steps = target.partition("@")
    return name.strip(), Path(path), int(steps or 1)


def pil_resize(method: int) -> Upscaler:
    def upscale(lrs, sizes):
        return {name: to_pil(lr).resize((sizes[name][1], sizes[name][0]), method) for name, lr in lrs.items()}
    return upscale


def flowsr_upscaler(pipe: FlowSRPipeline, scale: int, steps: int) -> Upscaler:
    def upscale(lrs, sizes):
        return {name: pipe.upscale(to_pil(lr), scale=scale, steps=steps) for name, lr in lrs.items()}
    return upscale


def command_upscaler(command: str) -> Upscaler:
    """Run ``command`` (``{lr}``, ``{out}`` replaced by folders) on PNGs of the LR images; read its outputs."""
    def upscale(lrs, sizes):
        with tempfile.TemporaryDirectory() as work:
            lr_dir, out_dir = Path(work) / "lr", Path(work) / "out"
            lr_dir.mkdir()
            out_dir.mkdir()
            for name, lr in lrs.items():
                save_png(lr, lr_dir / f"{name}.png")
            argv = [part.replace("{lr}", str(lr_dir)).replace("{out}", str(out_dir)) for part in shlex.split(command)]
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            return {name: load_rgb(out_dir / f"{name}.png") for name in lrs}
    return upscale


def build_methods(args: argparse.Namespace) -> list[tuple[str, Upscaler]]:
    """Bicubic (the baseline every gain is measured against), Lanczos, the models, the other upscalers."""
    methods = [("bicubic", pil_resize(Image.BICUBIC)), ("Lanczos", pil_resize(Image.LANCZOS))]
    pipelines: dict[Path, FlowSRPipeline] = {}
    for text in args.model:
        name, path, steps = parse_model(text)
        if path not in pipelines:
            pipelines[path] = FlowSRPipeline.from_pretrained(path, device=args.device, dtype="fp32")
        methods.append((name, flowsr_upscaler(pipelines[path], args.scale, steps)))
    for text in args.upscaler:
        name, _, command = text.partition("=")
        methods.append((name.strip(), command_upscaler(command)))
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hr", type=Path, required=True, help="folder of held-out HR photos")
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH[@STEPS]; repeatable")
    parser.add_argument("--upscaler", action="append", default=[], help="NAME=COMMAND with {lr} and {out}; repeatable")
    parser.add_argument("--lr-kinds", default="bicubic,mild", help=f"comma-separated, of {', '.join(LR_KINDS)}")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random degradations")
    parser.add_argument("--seams", action="store_true", help="also report tiled vs untiled PSNR of the first model")
    parser.add_argument("--device", default="cpu", help="where the models run (cpu, cuda, ...); fp32 either way")
    parser.add_argument("--no-ssimulacra2", action="store_true", help="skip SSIMULACRA2 (the slowest metric)")
    parser.add_argument("--json", type=Path, help="also write {method: {LR kind: {metric: mean, per_image: ...}}}")
    args = parser.parse_args()
    kinds = tuple(kind.strip() for kind in args.lr_kinds.split(",") if kind.strip())
    unknown = sorted(set(kinds) - set(LR_KINDS))
    if unknown:
        parser.error(f"unknown --lr-kinds {unknown}; use {', '.join(LR_KINDS)}")

    try:  # the models load first: a wrong path or file is answered before minutes of work
        methods = build_methods(args)
    except FlowSRError as error:
        parser.error(f"{error} (--model takes NAME=PATH[@STEPS]; the name ends at the first '=')")
    hr_images = load_hr_images(args.hr, args.scale)
    sizes = {name: tuple(hr.shape[1:]) for name, hr in hr_images.items()}
    lr_sets = make_lr_sets(hr_images, args.scale, args.seed, kinds)
    print(f"{len(hr_images)} held-out photos from {args.hr}, x{args.scale}\n")
    print("| method | LR | PSNR-Y | SSIM-Y | SSIMULACRA2 | photos above bicubic (PSNR-Y) |\n|---|---|---|---|---|---|")
    results: dict[str, dict[str, dict]] = {}
    for name, upscale in methods:
        for kind, lrs in lr_sets.items():
            outputs = upscale(lrs, sizes)
            scored = evaluate_pairs(((image, outputs[image], to_pil(hr_images[image])) for image in lrs),
                                    scale=args.scale, use_ssimulacra2=not args.no_ssimulacra2)
            per_image = {row["image"]: row["PSNR-Y"] for row in scored.rows}
            baseline = results.get("bicubic", {}).get(kind, {}).get("per_image", per_image)
            above = sum(per_image[image] > baseline[image] for image in per_image)
            results.setdefault(name, {})[kind] = {**scored.means, "per_image": per_image}
            means = scored.means
            print(f"| {name} | {kind} | {format_value(means['PSNR-Y'])} | {format_value(means['SSIM-Y'])} | "
                  f"{format_value(means.get('SSIMULACRA2', float('nan')))} | "
                  f"{'-' if name == 'bicubic' else f'{above}/{len(per_image)}'} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    model_methods = [parse_model(text) for text in args.model]
    if args.seams and model_methods:
        report_seams(model_methods[0], lr_sets[kinds[0]], args)


def report_seams(model: tuple[str, Path, int], lrs: dict[str, torch.Tensor], args: argparse.Namespace) -> None:
    name, path, _ = model
    pipe = FlowSRPipeline.from_pretrained(path, device=args.device, dtype="fp32")
    values = []
    for lr in lrs.values():
        image = to_pil(lr)
        whole = pipe.upscale(image, scale=args.scale, tile_size=0)
        tiled = pipe.upscale(image, scale=args.scale, tile_size=32, tile_overlap=8)
        values.append(psnr_y(torch.from_numpy(np.array(tiled)).permute(2, 0, 1).float() / 255,
                             torch.from_numpy(np.array(whole)).permute(2, 0, 1).float() / 255, 0))
    print(f"\ntiled (32-latent tiles, overlap 8) vs untiled, {name}: PSNR-Y mean "
          f"{np.mean(values):.2f} dB, min {np.min(values):.2f} dB")


if __name__ == "__main__":
    main()
