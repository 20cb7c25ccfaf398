"""Held-out test sets: HR photos and the LR images every model is scored on, made the same way every time.

LR kinds: ``bicubic`` (clean), ``mild`` (:func:`train.degradations.mild_degrade`) and ``Real-ESRGAN``
(:func:`train.degradations.realesrgan_degrade`). The random kinds seed the i-th image of a folder with
``seed + i``, so ``python -m train.held_out HR_DIR OUT_DIR --kind mild`` writes the very LR images that
``train.compare_models`` scores.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from .data import crop_to_multiple, list_images, read_image
from .degradations import bicubic_downscale, mild_degrade, realesrgan_degrade, to_uint8

LR_KINDS = ("bicubic", "mild", "Real-ESRGAN")


def degrade_held_out(hr: torch.Tensor, scale: int, seed: int, kind: str) -> torch.Tensor:
    """The fixed LR (uint8) of one held-out uint8 HR image whose sides are multiples of ``scale``."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "bicubic":
        return bicubic_downscale(hr, scale)
    if kind == "mild":
        return mild_degrade(hr, scale, generator)
    if kind == "Real-ESRGAN":
        return to_uint8(realesrgan_degrade(hr.float() / 255.0, scale, generator))
    raise ValueError(f"unknown LR kind {kind!r}; use one of {', '.join(LR_KINDS)}")


def load_hr_images(folder: str | Path, scale: int) -> dict[str, torch.Tensor]:
    """{name: uint8 (3,H,W)} of a folder, each cropped to a multiple of ``scale`` (LR x scale = HR exactly)."""
    return {path.stem: crop_to_multiple(read_image(path), scale) for path in list_images(folder)}


def make_lr_sets(hr_images: dict[str, torch.Tensor], scale: int, seed: int,
                 kinds: tuple[str, ...] = LR_KINDS) -> dict[str, dict[str, torch.Tensor]]:
    """{kind: {name: uint8 LR}}: the i-th image of each random kind seeded with ``seed + i``."""
    return {kind: {name: degrade_held_out(hr, scale, seed + index, kind)
                   for index, (name, hr) in enumerate(hr_images.items())} for kind in kinds}


def save_png(image: torch.Tensor, path: Path) -> None:
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def degrade_folder(hr_dir: str, out_dir: str, scale: int = 4, seed: int = 0, kind: str = "Real-ESRGAN") -> list[str]:
    """Write the ``kind`` LR version (PNG) of every image in ``hr_dir``: the LR set ``compare_models`` scores."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lr_images = make_lr_sets(load_hr_images(hr_dir, scale), scale, seed, (kind,))[kind]
    written = []
    for name, lr in lr_images.items():
        save_png(lr, out / f"{name}.png")
        written.append(str(out / f"{name}.png"))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m train.held_out",
                                     description="Write the fixed LR images of a folder of held-out HR images.")
    parser.add_argument("hr_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--kind", choices=LR_KINDS, default="Real-ESRGAN")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in degrade_folder(args.hr_dir, args.out_dir, args.scale, args.seed, args.kind):
        print(name)


if __name__ == "__main__":
    main()
