"""Evaluate super-resolved images against ground truth.

    python -m train.evaluate SR_DIR GT_DIR [--scale 4] [--pyiqa lpips,dists,niqe,musiq,clipiqa]

Images are paired by file name without extension. PSNR-Y and SSIM-Y always (border of ``--scale`` pixels
cropped), SSIMULACRA2 when the ``ssimulacra2`` package is installed, pyiqa metrics when asked for and able
to run here. Prints a per-image table and the averages; ``--json`` also writes them to a file.

From Python (e.g. for a model card), on in-memory images of any kind ``train.metrics.to_rgb255`` accepts:

    result = evaluate_pairs([(name, sr_image, gt_image), ...], scale=4)
    print(format_table(result))
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from PIL import Image

from flowsr.errors import BadInputError
from flowsr.imagefiles import IMAGE_SUFFIXES

from . import metrics


@dataclass
class EvalResult:
    rows: list[dict] = field(default_factory=list)  # one per image: {"image": name, metric: value, ...}
    notes: list[str] = field(default_factory=list)  # why an optional metric did not run

    @property
    def columns(self) -> list[str]:
        return [key for key in self.rows[0] if key != "image"] if self.rows else []

    @property
    def means(self) -> dict[str, float]:
        return {column: sum(row[column] for row in self.rows) / len(self.rows) for column in self.columns}


def match_size(sr: torch.Tensor, gt: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop GT to the SR size when GT was not a multiple of the scale (the usual "modcrop")."""
    (h, w), (gh, gw) = sr.shape[-2:], gt.shape[-2:]
    if (h, w) == (gh, gw):
        return gt
    if 0 <= gh - h < scale and 0 <= gw - w < scale:
        return gt[..., :h, :w]
    raise BadInputError(f"SR image is {w}x{h} but GT is {gw}x{gh}: they must match (up to a crop of less "
                        f"than the scale {scale}); check --scale and that both folders hold the same images")


def evaluate_pairs(pairs: Iterable[tuple[str, object, object]], scale: int = 4, crop_border: int | None = None,
                   use_ssimulacra2: bool = True, pyiqa_names: Iterable[str] = (),
                   device: torch.device | str = "cpu") -> EvalResult:
    """Score each (name, sr, gt) pair; ``crop_border`` defaults to ``scale`` as in SR papers."""
    border = scale if crop_border is None else crop_border
    result = EvalResult()
    s2_missing = metrics.ssimulacra2_available() if use_ssimulacra2 else "SSIMULACRA2 off"
    if use_ssimulacra2 and s2_missing:
        result.notes.append(s2_missing)
    iqa, iqa_notes = metrics.load_pyiqa(tuple(pyiqa_names), device)
    result.notes.extend(iqa_notes)
    for name, sr, gt in pairs:
        sr, gt = (metrics.to_rgb255(image) / metrics.PEAK for image in (sr, gt))
        gt = match_size(sr, gt, scale)
        row = {"image": name, "PSNR-Y": metrics.psnr_y(sr, gt, border), "SSIM-Y": metrics.ssim_y(sr, gt, border)}
        if not s2_missing:
            row["SSIMULACRA2"] = metrics.ssimulacra2(sr, gt)
        for metric in iqa:
            column = metric.name.upper() + (" (lower better)" if metric.lower_better else "")
            row[column] = metric(sr, gt, torch.device(device))
        result.rows.append(row)
    return result


def image_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def evaluate_dirs(sr_dir: str | Path, gt_dir: str | Path, **kwargs) -> EvalResult:
    """``evaluate_pairs`` over two folders, pairing files by name without extension."""
    sr_files, gt_files = image_files(Path(sr_dir)), image_files(Path(gt_dir))
    if not gt_files:
        raise BadInputError(f"no images in the GT folder {gt_dir}")
    missing = sorted(set(gt_files) - set(sr_files))
    if missing:
        raise BadInputError(f"{len(missing)} GT images have no SR image of the same name in {sr_dir}: "
                            f"{', '.join(missing[:10])}")
    pairs = ((name, load_rgb(sr_files[name]), load_rgb(path)) for name, path in gt_files.items())
    return evaluate_pairs(pairs, **kwargs)


def format_value(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def format_table(result: EvalResult) -> str:
    """A Markdown table: one row per image, then the mean, then any notes."""
    header = ["image", *result.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result.rows:
        lines.append("| " + " | ".join([row["image"], *(format_value(row[c]) for c in result.columns)]) + " |")
    lines.append("| **mean** | " + " | ".join(format_value(v) for v in result.means.values()) + " |")
    lines.extend(f"\nnote: {note}" for note in result.notes)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="PSNR/SSIM (Y channel), SSIMULACRA2 and optional pyiqa "
                                     "metrics of an SR folder against a ground-truth folder.")
    parser.add_argument("sr_dir", type=Path)
    parser.add_argument("gt_dir", type=Path)
    parser.add_argument("--scale", type=int, default=4, help="upscaling factor (default 4)")
    parser.add_argument("--crop-border", type=int, default=None, help="pixels cropped per side (default: scale)")
    parser.add_argument("--no-ssimulacra2", action="store_true", help="skip SSIMULACRA2 (the slowest metric)")
    parser.add_argument("--pyiqa", default="", help=f"comma-separated pyiqa metrics, e.g. {','.join(metrics.PYIQA_DEFAULT)}")
    parser.add_argument("--device", default="cpu", help="device for pyiqa metrics")
    parser.add_argument("--json", type=Path, default=None, help="also write rows, means and notes here")
    args = parser.parse_args(argv)
    try:
        result = evaluate_dirs(args.sr_dir, args.gt_dir, scale=args.scale, crop_border=args.crop_border,
                               use_ssimulacra2=not args.no_ssimulacra2,
                               pyiqa_names=[n for n in args.pyiqa.split(",") if n], device=args.device)
    except BadInputError as error:
        parser.exit(2, f"error: {error}\n")
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps({"rows": result.rows, "means": result.means, "notes": result.notes},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
