"""``python -m flowsr``: upscale images and folders, or check a weights file.

Exit codes: 0 success, 2 bad input (a file, an option, a checkpoint), 1 anything else, 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import FlowSRError, BadInputError, CheckpointError
from .options import add_upscale_options

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowsr", description="One-step image super-resolution (FlowSR).")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("upscale", help="upscale images or folders of images")
    up.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    up.add_argument("-o", "--output", type=Path, required=True,
                    help="output file (one input image) or folder (created if missing)")
    up.add_argument("--checkpoint", help="flowsr.safetensors (public weights) or a small-model file; "
                                         "default: the built-in small model")
    up.add_argument("--base-model", help="SD 2.1-base for the public weights: a diffusers folder, a single-file "
                                         ".safetensors, or a hub id (with --allow-download)")
    up.add_argument("--allow-download", action="store_true", help="let --base-model be fetched from the hub")
    add_upscale_options(up)
    up.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu")

    check = commands.add_parser("check", help="validate a FlowSR weights file and print what it holds")
    check.add_argument("file", type=Path)
    return parser


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Image files named directly, and those found directly inside named folders, in sorted order."""
    images: list[Path] = []
    for path in inputs:
        if path.is_dir():
            images += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            images.append(path)
        else:
            raise BadInputError(f"{path} does not exist")
    if not images:
        raise BadInputError(f"no images found in {', '.join(map(str, inputs))} (looked for {sorted(IMAGE_SUFFIXES)})")
    return images


def output_paths(images: Sequence[Path], output: Path) -> list[Path]:
    """One input and an output with an image suffix: that file. Otherwise: ``output/<name>.png``."""
    if len(images) == 1 and output.suffix.lower() in IMAGE_SUFFIXES:
        return [output]
    if output.suffix.lower() in IMAGE_SUFFIXES:
        raise BadInputError(f"{len(images)} images cannot all be written to the file {output}; give a folder")
    names = [image.stem for image in images]
    if len(set(names)) != len(names):
        raise BadInputError("two inputs share a file name; upscale them into different folders")
    return [output / f"{name}.png" for name in names]


def save_image(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in {".jpg", ".jpeg"} and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha, nor 16 bits
    image.save(path)


def run_upscale(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    from .pipeline import FlowSRPipeline

    images = collect_images(args.inputs)
    destinations = output_paths(images, args.output)
    pipe = FlowSRPipeline.from_pretrained(args.checkpoint, args.base_model, device=args.device, dtype=args.dtype,
                                          allow_download=args.allow_download)
    failures = 0
    with tqdm(total=len(images), unit="image", disable=len(images) == 1) as image_bar:
        for source, destination in zip(images, destinations):
            with tqdm(desc=source.name, unit="call", leave=False) as call_bar:
                def progress(done: int, total: int) -> None:
                    call_bar.total = total
                    call_bar.update(done - call_bar.n)
                try:
                    with Image.open(source) as image:
                        image.load()
                        result = pipe.upscale(image, scale=args.scale, steps=args.steps, schedule=args.schedule,
                                              tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                                              tile_batch=args.tile_batch, color_fix=args.color_fix, seed=args.seed,
                                              progress=progress)
                    save_image(result, destination)
                except (UnidentifiedImageError, OSError, BadInputError) as error:
                    failures += 1
                    tqdm.write(f"flowsr: skipped {source}: {error}", file=sys.stderr)
                    continue
            image_bar.update()
            tqdm.write(f"{source} -> {destination}")
    return EXIT_BAD_INPUT if failures else EXIT_OK


def run_check(args: argparse.Namespace) -> int:
    from .checkpoint import check

    report = check(args.file)
    print(report.text)
    return EXIT_OK if report.ok else EXIT_BAD_INPUT


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_upscale(args) if args.command == "upscale" else run_check(args)
    except (BadInputError, CheckpointError) as error:
        print(f"flowsr: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FlowSRError as error:
        print(f"flowsr: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("flowsr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
