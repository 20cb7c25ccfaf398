"""Make the node pack's icon (assets/icon.png, listed as the registry's Icon) from the example photo: a square
of the bee, the lower-left half as blocks of 8x8 pixels, the upper-right half sharp: what an upscaler does.

    python assets/make_icon.py
"""
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIDE, BLOCK = 256, 8


def make_icon() -> Image.Image:
    with Image.open(HERE / "honey-bee.png") as photo:
        photo = photo.convert("RGB")
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    sharp = photo.crop((left, top, left + side, top + side)).resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    blocky = sharp.resize((SIDE // BLOCK, SIDE // BLOCK), Image.Resampling.BOX).resize((SIDE, SIDE),
                                                                                        Image.Resampling.NEAREST)
    lower_left = Image.new("L", (SIDE, SIDE), 0)
    ImageDraw.Draw(lower_left).polygon([(0, 0), (0, SIDE), (SIDE, SIDE)], fill=255)
    icon = Image.composite(blocky, sharp, lower_left)
    ImageDraw.Draw(icon).line([(0, 0), (SIDE, SIDE)], fill=(255, 255, 255), width=3)
    return icon


if __name__ == "__main__":
    make_icon().save(HERE / "icon.png", optimize=True)
