"""Build the photo set for the built-in FlowSR model from Debian packages.

    python -m train.prepare_photos --out data/photos

Downloads four Debian 12 packages (six with ``--selection``) with ``apt-get download`` (never installs
them), unpacks them with ``dpkg -x`` into a temporary folder, checks every listed file against its SHA-256,
and writes

    OUT/train/*.jpg        longer side <= 1536 px, JPEG quality 95, no chroma subsampling
    OUT/val/*.png          longer side <= 1024 px
    OUT/test/*.png         longer side <= 1024 px, held out: never used in training or for model choice
    OUT/select/*.png       with --selection: longer side <= 1024 px, only for choosing between trained models
    OUT/test_lr_bicubic_x4/*.png   the test set downscaled 4x (PIL bicubic, antialiased)
    OUT/val_lr_bicubic_x4/*.png   (and select_lr_bicubic_x4/ with --selection)
    OUT/manifest.json      per output file: source package and version, author, licence, split

Every dimension is cut to a multiple of 16 (centre crop of at most 15 px), so 2x and 4x LR images have
exact sizes. Why each photo was chosen, and why others were left out, is in ``train/DATA.md``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageCms, ImageOps

# Debian 12 (bookworm) versions the checksums below were taken from.
PACKAGES = {
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "lomiri-wallpapers-20.04": "20.04.0-2",
    "palapeli-data": "4:22.12.3-1",
    "python3-skimage": "0.19.3-8",
    "mate-backgrounds": "1.26.0-1",            # selection set only (--selection)
    "plasma-workspace-wallpapers": "4:5.27.5-2",  # selection set only (--selection)
}

LOMIRI_16 = "usr/share/backgrounds/"
PALAPELI = "usr/share/palapeli/collection/"
SKIMAGE = "usr/lib/python3/dist-packages/skimage/data/"
MATE = "usr/share/backgrounds/mate/nature/"
PLASMA = "usr/share/wallpapers/"
PLASMA_IMAGE = "/contents/images/2560x1600.jpg"

SPLITS = ("train", "val", "test", "select")
TRAIN_LONG_SIDE = 1536
EVAL_LONG_SIDE = 1024
SIZE_MULTIPLE = 16
LR_SCALE = 4


class Photo(NamedTuple):
    name: str
    split: str
    package: str
    path: str
    sha256: str
    author: str
    licence: str


PHOTOS = (
    # Held-out test set: only CC0 / public-domain / CC-BY photos, so that it stays the same whether
    # or not the share-alike photos are used for training.
    Photo("picosdeeuropa", "test", "lomiri-wallpapers-16.04", LOMIRI_16 + "picosdeeuropa_by_Aitzol_Berasategi.jpg",
          "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a", "Aitzol Berasategi", "CC-BY-4.0"),
    Photo("friends", "test", "lomiri-wallpapers-16.04", LOMIRI_16 + "friends_by_Aitzol_Berasategi.jpg",
          "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d", "Aitzol Berasategi", "CC-BY-4.0"),
    Photo("brushes", "test", "lomiri-wallpapers-16.04", LOMIRI_16 + "Picture_1A_by_freespace.jpg",
          "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b", 'Trevor "Freespace"', "CC-BY-4.0"),
    Photo("seeding", "test", "lomiri-wallpapers-16.04", LOMIRI_16 + "seeding_by_Clements_Engelhardt.jpg",
          "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f", "Clemens Engelhardt", "CC0-1.0"),
    Photo("honey-bee", "test", "palapeli-data", PALAPELI + "european-honey-bee.jpg",
          "9d54ae706bddd899c91b2b801d9ca4556a5a9a399b4043f9d539df62a8cb7f27", "John Severns", "public-domain"),
    Photo("cincinnati-bridge", "test", "palapeli-data", PALAPELI + "cincinnati-bridge.jpg",
          "09772d09318b34a5c5edd58ee86ff462bcd2907006f31cc8e0704310f8e9ab60", "Derek Jensen", "public-domain"),
    # Validation: small, only for monitoring during training.
    Photo("chelsea", "val", "python3-skimage", SKIMAGE + "chelsea.png",
          "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb", "Stefan van der Walt", "CC0-1.0"),
    Photo("rocket", "val", "python3-skimage", SKIMAGE + "rocket.jpg",
          "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c", "SpaceX", "public-domain"),
    # Training set.
    Photo("bridge", "train", "lomiri-wallpapers-16.04", LOMIRI_16 + "Bridge_by_Sander_Klootwijk.jpg",
          "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050", "Sander Klootwijk", "CC-BY-SA-4.0"),
    Photo("dragonfly", "train", "lomiri-wallpapers-16.04", LOMIRI_16 + "Dragonfly_by_Bolly.jpg",
          "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3", '"Bolly"', "CC-BY-SA-4.0"),
    Photo("fig", "train", "lomiri-wallpapers-16.04", LOMIRI_16 + "Picture_0B_by_freespace.jpg",
          "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad", 'Trevor "Freespace"', "CC-BY-4.0"),
    Photo("wine", "train", "lomiri-wallpapers-16.04", LOMIRI_16 + "Wine_by_Jakkub_Mede.jpg",
          "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74", "Jakub Mede", "CC-BY-4.0"),
    Photo("aitzgorri", "train", "lomiri-wallpapers-16.04", LOMIRI_16 + "aitzgorri_by_Aitzol_Berasategi.jpg",
          "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36", "Aitzol Berasategi", "CC-BY-4.0"),
    Photo("free", "train", "lomiri-wallpapers-16.04", LOMIRI_16 + "free_by_Peter_Nerlich.jpg",
          "85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373", "Peter Nerlich", "CC-BY-SA-4.0"),
    Photo("greentock", "train", "lomiri-wallpapers-16.04", LOMIRI_16 + "greentock_by_Peter_Nerlich.jpg",
          "e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889", "Peter Nerlich", "CC-BY-SA-4.0"),
    Photo("life", "train", "lomiri-wallpapers-16.04", LOMIRI_16 + "life_by_Aitzol_Berasategi.jpg",
          "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05", "Aitzol Berasategi", "CC-BY-4.0"),
    Photo("sunset", "train", "lomiri-wallpapers-16.04", LOMIRI_16 + "sunset_by_Aitzol_Berasategi.jpg",
          "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18", "Aitzol Berasategi", "CC-BY-4.0"),
    Photo("kleiber", "train", "lomiri-wallpapers-20.04", "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
          "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7", "Lukas Baubkus", "CC-BY-SA-3.0"),
    Photo("citrus-fruits", "train", "palapeli-data", PALAPELI + "citrus-fruits.jpg",
          "0cbd7154a14789803167c86705130d0358875198231269df168ea26224e70848", "US Department of Agriculture",
          "public-domain"),
    Photo("astronaut", "train", "python3-skimage", SKIMAGE + "astronaut.png",
          "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", "NASA", "public-domain"),
    Photo("coffee", "train", "python3-skimage", SKIMAGE + "coffee.png",
          "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7", "Rachel Michetti", "CC0-1.0"),
    Photo("camera", "train", "python3-skimage", SKIMAGE + "camera.png",
          "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a", "Lav Varshney", "CC0-1.0"),
    Photo("brick", "train", "python3-skimage", SKIMAGE + "brick.png",
          "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf", "CC0Textures (Bricks25)", "CC0-1.0"),
    Photo("grass", "train", "python3-skimage", SKIMAGE + "grass.png",
          "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89", "linolafett", "CC0-1.0"),
    Photo("gravel", "train", "python3-skimage", SKIMAGE + "gravel.png",
          "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12", "CC0Textures (Gravel04)", "CC0-1.0"),
    # Selection set (--selection): copyleft photos that are only measured, to choose between trained
    # candidates; never trained on (train/DATA.md says why that keeps the weights' licence unchanged).
    Photo("aqua", "select", "mate-backgrounds", MATE + "Aqua.jpg",
          "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce", "Charles Barbin", "GPL-2.0-or-later"),
    Photo("garden", "select", "mate-backgrounds", MATE + "Garden.jpg",
          "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78", "Charles Barbin", "GPL-2.0-or-later"),
    Photo("ladybird", "select", "mate-backgrounds", MATE + "LadyBird.jpg",
          "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d", "Charles Barbin", "GPL-2.0-or-later"),
    Photo("yellowflower", "select", "mate-backgrounds", MATE + "YellowFlower.jpg",
          "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306", "Charles Barbin", "GPL-2.0-or-later"),
    Photo("blinds", "select", "mate-backgrounds", MATE + "Blinds.jpg",
          "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600",
          "Lennart Poettering, Andrea Cimitan", "GPL-2.0-or-later"),
    Photo("dune", "select", "mate-backgrounds", MATE + "Dune.jpg",
          "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91",
          "Marco Cogoni, Hylke Bons", "GPL-2.0-or-later"),
    Photo("freshflower", "select", "mate-backgrounds", MATE + "FreshFlower.jpg",
          "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e", "Jens Ansorg", "GPL-2.0-or-later"),
    Photo("greenmeadow", "select", "mate-backgrounds", MATE + "GreenMeadow.jpg",
          "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832",
          "Timothy Schellhase, Lapo Calamandrei", "GPL-2.0-or-later"),
    Photo("raindrops", "select", "mate-backgrounds", MATE + "RainDrops.jpg",
          "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16",
          '"blackcombwhistler07"', "GPL-2.0-or-later"),
    Photo("storm", "select", "mate-backgrounds", MATE + "Storm.jpg",
          "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957", "Sergey Nazarov", "GPL-2.0-or-later"),
    Photo("twowings", "select", "mate-backgrounds", MATE + "TwoWings.jpg",
          "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb",
          "Charles Barbin, Hylke Bons", "GPL-2.0-or-later"),
    Photo("wood", "select", "mate-backgrounds", MATE + "Wood.jpg",
          "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07",
          "Jean-François Fortin Tam", "GPL-2.0-or-later"),
    Photo("bythewater", "select", "plasma-workspace-wallpapers", PLASMA + "BytheWater" + PLASMA_IMAGE,
          "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f", "Maciej Wiklo", "LGPL-3.0"),
    Photo("coldripple", "select", "plasma-workspace-wallpapers", PLASMA + "ColdRipple" + PLASMA_IMAGE,
          "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f", "Risto Saukonpää", "LGPL-3.0"),
    Photo("colorfulcups", "select", "plasma-workspace-wallpapers", PLASMA + "ColorfulCups" + PLASMA_IMAGE,
          "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d", "Dmitri Popov", "LGPL-3.0"),
    Photo("darkesthour", "select", "plasma-workspace-wallpapers", PLASMA + "DarkestHour" + PLASMA_IMAGE,
          "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce", "Risto Saukonpää", "LGPL-3.0"),
    Photo("eveningglow", "select", "plasma-workspace-wallpapers", PLASMA + "EveningGlow" + PLASMA_IMAGE,
          "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a", "Ian Hex", "LGPL-3.0"),
    Photo("fallenleaf", "select", "plasma-workspace-wallpapers", PLASMA + "FallenLeaf" + PLASMA_IMAGE,
          "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de", "Martin Klapetek", "LGPL-3.0"),
    Photo("grey", "select", "plasma-workspace-wallpapers", PLASMA + "Grey" + PLASMA_IMAGE,
          "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed", "Sigi Sagi", "LGPL-3.0"),
    Photo("kite", "select", "plasma-workspace-wallpapers", PLASMA + "Kite" + PLASMA_IMAGE,
          "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8", "Risto Saukonpää", "LGPL-3.0"),
    Photo("onestandsout", "select", "plasma-workspace-wallpapers", PLASMA + "OneStandsOut" + PLASMA_IMAGE,
          "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd", "Risto Saukonpää", "LGPL-3.0"),
    Photo("path", "select", "plasma-workspace-wallpapers", PLASMA + "Path" + PLASMA_IMAGE,
          "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8", "Risto Saukonpää", "LGPL-3.0"),
    Photo("summer-1am", "select", "plasma-workspace-wallpapers", PLASMA + "summer_1am" + PLASMA_IMAGE,
          "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8", "Risto Saukonpää", "LGPL-3.0"),
)


def is_share_alike(photo: Photo) -> bool:
    return photo.licence.startswith("CC-BY-SA")


def download_package(package: str, version: str, dest: Path) -> Path:
    """Fetch one .deb into ``dest`` (reused when already there); falls back to the current version,
    since the per-file checksums, not the package version, decide whether the photos are the same."""
    found = sorted(dest.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    for spec in (f"{package}={version}", package):
        done = subprocess.run(["apt-get", "download", spec], cwd=dest, capture_output=True, text=True)
        found = sorted(dest.glob(f"{package}_*.deb"))
        if done.returncode == 0 and found:
            return found[-1]
    sys.exit(f"apt-get download {package} failed:\n{done.stderr}\n"
             "Run 'apt-get update' first (this needs Debian 12 or newer package lists), "
             "or put the .deb files into the --cache folder yourself.")


def unpack(deb: Path, dest: Path) -> Path:
    target = dest / deb.name.split("_")[0]
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg", "-x", str(deb), str(target)], check=True)
    return target


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_srgb(path: Path) -> Image.Image:
    """Open as 8-bit sRGB: EXIF rotation applied, embedded ICC profile converted, grey made RGB."""
    image = ImageOps.exif_transpose(Image.open(path))
    icc = image.info.get("icc_profile")
    if icc:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        image = ImageCms.profileToProfile(image.convert("RGB"), source, ImageCms.createProfile("sRGB"))
    image = image.convert("RGB")
    image.info.clear()  # the generated sRGB profile carries a timestamp: files would differ run to run
    return image


def resize_and_crop(image: Image.Image, long_side: int) -> Image.Image:
    """Antialiased LANCZOS downscale (never upscale), then a centre crop to multiples of SIZE_MULTIPLE."""
    factor = long_side / max(image.size)
    if factor < 1:
        size = (round(image.width * factor), round(image.height * factor))
        image = image.resize(size, Image.Resampling.LANCZOS)
    width, height = (side - side % SIZE_MULTIPLE for side in image.size)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def save(image: Image.Image, path: Path) -> None:
    if path.suffix == ".jpg":
        image.save(path, quality=95, subsampling=0, optimize=True)
    else:
        image.save(path, optimize=True)


def bicubic_lr(image: Image.Image, scale: int) -> Image.Image:
    """The LR of the written folders and of training (``train.degradations``): torch-free, so it lives here."""
    return image.resize((image.width // scale, image.height // scale), Image.Resampling.BICUBIC)


def prepare(out: Path, cache: Path, share_alike: bool = True, selection: bool = False) -> list[dict]:
    photos = [p for p in PHOTOS if (share_alike or not is_share_alike(p)) and (selection or p.split != "select")]
    deb_dir, root = cache / "debs", cache / "unpacked"
    deb_dir.mkdir(parents=True, exist_ok=True)
    versions, roots = {}, {}
    for package in sorted({p.package for p in photos}):
        deb = download_package(package, PACKAGES[package], deb_dir)
        versions[package] = deb.name.split("_")[1].replace("%3a", ":")
        roots[package] = unpack(deb, root)

    changed = [p.name for p in photos if sha256(roots[p.package] / p.path) != p.sha256]
    if changed:
        sys.exit(f"these source photos differ from the ones the manifest lists: {', '.join(changed)}. "
                 "The Debian packages changed; pin the versions in PACKAGES or review the new files.")

    if out.exists():
        if any(out.iterdir()) and not (out / "manifest.json").exists():
            sys.exit(f"{out} is not empty and was not written by this script; choose another --out")
        shutil.rmtree(out)
    records = []
    for photo in photos:
        held_out = photo.split != "train"
        image = resize_and_crop(load_srgb(roots[photo.package] / photo.path),
                                EVAL_LONG_SIDE if held_out else TRAIN_LONG_SIDE)
        target = out / photo.split / (photo.name + (".png" if held_out else ".jpg"))
        target.parent.mkdir(parents=True, exist_ok=True)
        save(image, target)
        if held_out:
            lr_target = out / f"{photo.split}_lr_bicubic_x{LR_SCALE}" / target.name
            lr_target.parent.mkdir(exist_ok=True)
            save(bicubic_lr(image, LR_SCALE), lr_target)
        records.append({
            "file": target.relative_to(out).as_posix(), "split": photo.split, "size": list(image.size),
            "author": photo.author, "licence": photo.licence, "package": photo.package,
            "package_version": versions[photo.package], "source_path": "/" + photo.path,
            "source_sha256": photo.sha256,
        })
    (out / "manifest.json").write_text(json.dumps(records, indent=1) + "\n")
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/photos"),
                        help="output folder (replaced if an earlier run wrote it)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep the downloaded .deb files here (default: a temporary folder)")
    parser.add_argument("--no-share-alike", action="store_true",
                        help="leave out the CC-BY-SA photos (training set only; val and test do not change)")
    parser.add_argument("--selection", action="store_true",
                        help="also write the selection set OUT/select/ (23 photos, 141 MB more to download)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flowsr-photos-") as tmp:
        cache = args.cache or Path(tmp)
        if args.cache:
            shutil.rmtree(cache / "unpacked", ignore_errors=True)
        records = prepare(args.out, cache, share_alike=not args.no_share_alike, selection=args.selection)
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    counts = {split: sum(r["split"] == split for r in records) for split in SPLITS}
    print(f"wrote {len(records)} photos ({counts}) to {args.out}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
