"""Held-out comparison of FlowSR models against bicubic, on clean (bicubic) and Real-ESRGAN-degraded LR.

    python -m train.compare_models --hr data/photos/test \\
        --model "stage 1, 1 step=runs/tiny_stage1/flowsr.safetensors@1" \\
        --model "stage 1, 4 steps=runs/tiny_stage1/flowsr.safetensors@4" \\
        --model "distilled, 1 step=runs/tiny_stage2/flowsr.safetensors@1"

LR images are made from the HR photos here, deterministically (fixed seed per image), so every model sees
the same inputs. Prints a Markdown table of mean PSNR-Y / SSIM-Y (and SSIMULACRA2 when installed), and with
``--seams`` the PSNR between tiled and untiled outputs of the first model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flowsr import FlowSRPipeline

from .data import bicubic_downscale, crop_to_multiple, list_images, read_image
from .degradations import degrade_held_out
from .evaluate import evaluate_pairs, format_value
from .metrics import psnr_y


def make_lr_sets(hr_images: dict[str, torch.Tensor], scale: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """{"bicubic": {name: lr}, "Real-ESRGAN": {name: lr}}, uint8 (3,h,w) tensors."""
    return {"bicubic": {name: bicubic_downscale(hr, scale) for name, hr in hr_images.items()},
            "Real-ESRGAN": {name: degrade_held_out(hr, scale, seed + index)
                            for index, (name, hr) in enumerate(hr_images.items())}}


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def parse_model(text: str) -> tuple[str, Path, int]:
    name, _, target = text.partition("=")
    path, _, steps = target.partition("@")
    return name.strip(), Path(path), int(steps or 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hr", type=Path, required=True, help="folder of held-out HR photos")
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH[@STEPS]; repeatable")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of the Real-ESRGAN degradations")
    parser.add_argument("--seams", action="store_true", help="also report tiled vs untiled PSNR of the first model")
    parser.add_argument("--device", default="cpu", help="where the models run (cpu, cuda, ...); fp32 either way")
    parser.add_argument("--no-ssimulacra2", action="store_true", help="skip SSIMULACRA2 (the slowest metric)")
    parser.add_argument("--json", type=Path, help="also write the means here: {method: {LR kind: {metric: value}}}")
    args = parser.parse_args()

    hr_images = {path.stem: crop_to_multiple(read_image(path), args.scale) for path in list_images(args.hr)}
    lr_sets = make_lr_sets(hr_images, args.scale, args.seed)
    methods = [("bicubic", None, 1)] + [parse_model(text) for text in args.model]
    pipelines: dict[Path, FlowSRPipeline] = {}
    print(f"{len(hr_images)} held-out photos from {args.hr}, x{args.scale}\n")
    print("| method | LR | PSNR-Y | SSIM-Y | SSIMULACRA2 |\n|---|---|---|---|---|")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, path, steps in methods:
        for lr_kind, lrs in lr_sets.items():
            pairs = []
            for image_name, lr in lrs.items():
                hr = hr_images[image_name]
                if path is None:
                    sr = to_pil(lr).resize((hr.shape[2], hr.shape[1]), Image.BICUBIC)
                else:
                    if path not in pipelines:
                        pipelines[path] = FlowSRPipeline.from_pretrained(path, device=args.device, dtype="fp32")
                    pipe = pipelines[path]
                    sr = pipe.upscale(to_pil(lr), scale=args.scale, steps=steps)
                pairs.append((image_name, sr, to_pil(hr)))
            means = evaluate_pairs(pairs, scale=args.scale, use_ssimulacra2=not args.no_ssimulacra2).means
            results.setdefault(name, {})[lr_kind] = means
            print(f"| {name} | {lr_kind} | {format_value(means['PSNR-Y'])} | {format_value(means['SSIM-Y'])} | "
                  f"{format_value(means.get('SSIMULACRA2', float('nan')))} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.seams and len(methods) > 1:
        pipe = pipelines[methods[1][1]]
        values = []
        for lr in lr_sets["bicubic"].values():
            image = to_pil(lr)
            whole = pipe.upscale(image, scale=args.scale, tile_size=0)
            tiled = pipe.upscale(image, scale=args.scale, tile_size=32, tile_overlap=8)
            values.append(psnr_y(torch.from_numpy(np.array(tiled)).permute(2, 0, 1).float() / 255,
                                 torch.from_numpy(np.array(whole)).permute(2, 0, 1).float() / 255, 0))
        print(f"\ntiled (32-latent tiles, overlap 8) vs untiled, {methods[1][0]}: PSNR-Y mean "
              f"{np.mean(values):.2f} dB, min {np.min(values):.2f} dB")


if __name__ == "__main__":
    main()
