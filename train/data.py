"""Training pairs: random HR crops and their LR versions, made on the fly or read from a paired folder.

Every sample is a pure function of ``(seed, epoch, position)``: the sampler hands the dataset a seed with each
index, so crops and degradations do not depend on the number of workers or processes, and a resumed run
sees exactly the data it would have seen.

Samples hold 8-bit tensors (small to move between processes); :func:`to_model_inputs` makes the float HR
image and the LR image resized to the HR size with bilinear interpolation, the pipeline's convention
(docs/FORMAT.md).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler

from flowsr.imagefiles import IMAGE_SUFFIXES

from .config import DataConfig
from .degradations import MildConfig, RealESRGANConfig, bicubic_downscale, mild_degrade, realesrgan_degrade, to_uint8

logger = logging.getLogger(__name__)

DEGRADATIONS = ("realesrgan", "bicubic", "mild", "mix")


def list_images(source: str | Path) -> list[Path]:
    """Image files under a folder (recursively, sorted), or the paths listed one per line in a text file.

    Relative paths in a list file are relative to the list file; blank lines and ``#`` comments are skipped.
    """
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if source.is_file():
        lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
        return [(source.parent / line) for line in lines if line and not line.startswith("#")]
    raise FileNotFoundError(f"no image folder or list file at {source}; set data.hr to a folder of HR images")


def read_image(path: Path, max_side: Optional[int] = None) -> torch.Tensor:
    """An image file as an RGB uint8 tensor (3,H,W); photos larger than ``max_side`` are shrunk (antialiased)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        if max_side and max(image.size) > max_side:
            ratio = max_side / max(image.size)
            image = image.resize((round(image.width * ratio), round(image.height * ratio)), Image.BICUBIC)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """The top-left part of a (C,H,W) image whose sides are multiples of ``multiple``: LR x scale = HR exactly."""
    return image[:, :image.shape[1] // multiple * multiple, :image.shape[2] // multiple * multiple]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A distinct 63-bit seed for each (run seed, epoch, position in the epoch)."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + position) % (2 ** 63)


class SeededSampler(Sampler):
    """Yields ``(index, seed)``: a fresh permutation per epoch and a seed per sample, both from the run's seed.

    Accelerate shards these batches between processes; ``set_epoch`` (which accelerate's loader calls too)
    picks the epoch.
    """

    def __init__(self, num_items: int, seed: int):
        self.num_items, self.seed, self.epoch = num_items, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1)))
        for position, index in enumerate(order.tolist()):
            yield index, sample_seed(self.seed, self.epoch, position)


@dataclass
class SkipReport:
    """Files left out of training, by reason; logged once, never fatal."""
    unreadable: list[str]
    too_small: list[str]
    unpaired: list[str]

    def log(self, what: str) -> None:
        for reason, paths in (("unreadable", self.unreadable), ("smaller than a crop", self.too_small),
                              ("without an LR partner", self.unpaired)):
            if paths:
                logger.warning("%s: skipped %d %s file(s), e.g. %s", what, len(paths), reason, paths[0])


def _dihedral(image: torch.Tensor, code: int) -> torch.Tensor:
    """One of the 8 flips/rotations of a square-pixel image."""
    image = torch.rot90(image, code % 4, dims=(1, 2))
    return image.flip(2) if code >= 4 else image


class PairDataset(Dataset):
    """Random crops of HR images with their LR crops: degraded on the fly, or cut from a paired LR image.

    ``degradation``: ``realesrgan``, ``bicubic``, ``mild`` or ``mix`` (Real-ESRGAN with probability
    ``mix_prob``, mild with probability ``mix_mild_prob``, else bicubic).
    With ``cache`` every image is decoded once at start-up; otherwise each sample reads its file.
    """

    def __init__(self, hr: str | Path, scale: int = 4, crop: int = 128, lr: Optional[str | Path] = None,
                 degradation: str = "realesrgan", mix_prob: float = 0.5, mix_mild_prob: float = 0.0,
                 realesrgan: Optional[RealESRGANConfig] = None, mild: Optional[MildConfig] = None,
                 cache: bool = True,
                 max_side: Optional[int] = None, min_side: Optional[int] = None, repeat: int = 1,
                 flip: bool = True, flat_prob: float = 0.0):
        if crop % scale:
            raise ValueError(f"data.crop ({crop}) must be a multiple of data.scale ({scale})")
        if degradation not in DEGRADATIONS:
            raise ValueError(f"unknown data.degradation {degradation!r}; use one of {', '.join(DEGRADATIONS)}")
        if mix_prob + mix_mild_prob > 1:
            raise ValueError(f"data.mix_realesrgan_prob + data.mix_mild_prob is {mix_prob + mix_mild_prob:g}; "
                             "keep the sum at most 1 (the rest is bicubic)")
        self.scale, self.crop, self.degradation = scale, crop, degradation
        self.mix_prob, self.mix_mild_prob = mix_prob, mix_mild_prob
        self.realesrgan, self.mild = realesrgan or RealESRGANConfig(), mild or MildConfig()
        self.cache, self.max_side, self.repeat, self.flip = cache, max_side, max(1, int(repeat)), flip
        self.flat_prob = flat_prob
        min_side = min_side or crop
        report = SkipReport([], [], [])
        lr_by_name = {_stem_key(p, Path(lr)): p for p in list_images(lr)} if lr is not None else None
        self.items: list[tuple[Path, Optional[Path]]] = []
        self.images: list[tuple[torch.Tensor, Optional[torch.Tensor]]] = []
        for path in list_images(hr):
            partner = None
            if lr_by_name is not None:
                partner = lr_by_name.get(_stem_key(path, Path(hr)))
                if partner is None:
                    report.unpaired.append(str(path))
                    continue
            try:
                size, decoded = self._probe(path, partner)
            except (OSError, ValueError, SyntaxError) as error:   # PIL raises all three for broken files
                report.unreadable.append(f"{path} ({error})")
                continue
            if min(size) < min_side:
                report.too_small.append(str(path))
                continue
            self.items.append((path, partner))
            if decoded is not None:
                self.images.append(decoded)
        report.log(f"training images in {hr}")
        self.skipped = report
        if not self.items:
            raise ValueError(f"no usable training images in {hr} (each needs both sides >= {min_side} px "
                             "after data.max_side); add images or lower data.crop")

    def _probe(self, path: Path, partner: Optional[Path]):
        """The HR size after ``max_side``, and the decoded pair when caching: broken files show up at start-up."""
        if self.cache:
            decoded = (read_image(path, self.max_side), read_image(partner) if partner is not None else None)
            return tuple(decoded[0].shape[1:]), decoded
        with Image.open(path) as image:
            image.verify()
            width, height = image.size
        if self.max_side and max(width, height) > self.max_side:
            ratio = self.max_side / max(width, height)
            width, height = round(width * ratio), round(height * ratio)
        return (height, width), None

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def _load(self, index: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.cache:
            return self.images[index]
        for offset in range(len(self.items)):   # a file that broke after start-up: warn, take the next one
            path, partner = self.items[(index + offset) % len(self.items)]
            try:
                return read_image(path, self.max_side), (read_image(partner) if partner is not None else None)
            except (OSError, ValueError, SyntaxError) as error:
                logger.warning("skipping %s, unreadable now (%s)", path, error)
        raise OSError("none of the training images can be read any more")

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        g = torch.Generator().manual_seed(seed)
        hr, lr = self._load(index % len(self.items))
        if lr is not None:
            hr_crop, lr_crop = self._paired_crop(hr, lr, g)
        else:
            hr_crop = _random_crop(hr, self.crop, g)
            lr_crop = None
        if self.flip:
            code = int(torch.randint(8, (), generator=g))
            hr_crop = _dihedral(hr_crop, code)
            lr_crop = _dihedral(lr_crop, code) if lr_crop is not None else None
        if lr_crop is None:
            if self.flat_prob and float(torch.rand((), generator=g)) < self.flat_prob:
                hr_crop = _flat_crop(hr_crop.shape, g)
            lr_crop = self._degrade(hr_crop, g)
        return {"hr": hr_crop.contiguous(), "lr": lr_crop.contiguous()}

    def _paired_crop(self, hr: torch.Tensor, lr: torch.Tensor, g: torch.Generator):
        lr_crop_side = self.crop // self.scale
        max_y, max_x = lr.shape[1] - lr_crop_side, lr.shape[2] - lr_crop_side
        if min(max_y, max_x) < 0 or hr.shape[1] < lr.shape[1] * self.scale or hr.shape[2] < lr.shape[2] * self.scale:
            raise ValueError(f"an LR image ({tuple(lr.shape[1:])}) does not fit its HR image "
                             f"({tuple(hr.shape[1:])}) at scale {self.scale}")
        y, x = int(torch.randint(max_y + 1, (), generator=g)), int(torch.randint(max_x + 1, (), generator=g))
        lr_crop = lr[:, y:y + lr_crop_side, x:x + lr_crop_side]
        s = self.scale
        return hr[:, y * s:y * s + self.crop, x * s:x * s + self.crop], lr_crop

    def _degrade(self, hr_crop: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        kind = self.degradation
        if kind == "mix":   # one draw picks the kind, so mix_mild_prob = 0 gives the same samples as before
            draw = float(torch.rand((), generator=g))
            kind = ("realesrgan" if draw < self.mix_prob else
                    "mild" if draw < self.mix_prob + self.mix_mild_prob else "bicubic")
        if kind == "realesrgan":
            return to_uint8(realesrgan_degrade(hr_crop.float() / 255.0, self.scale, g, self.realesrgan))
        if kind == "mild":
            return mild_degrade(hr_crop, self.scale, g, self.mild)
        return bicubic_downscale(hr_crop, self.scale)


def _stem_key(path: Path, root: Path) -> str:
    """Pairs HR and LR files by relative path without extension (``a/b.png`` ~ ``a/b.jpg``)."""
    return str(path.relative_to(root).with_suffix("")) if root.is_dir() else path.stem


def _flat_crop(shape: torch.Size, g: torch.Generator) -> torch.Tensor:
    """A crop of one random colour: photos have few truly flat areas, and a model never shown one paints a
    4-px pattern over it (issue #11)."""
    colour = torch.randint(256, (shape[0], 1, 1), generator=g, dtype=torch.int64).to(torch.uint8)
    return colour.expand(shape).contiguous()


def _random_crop(image: torch.Tensor, side: int, g: torch.Generator) -> torch.Tensor:
    max_y, max_x = image.shape[1] - side, image.shape[2] - side
    y, x = int(torch.randint(max_y + 1, (), generator=g)), int(torch.randint(max_x + 1, (), generator=g))
    return image[:, y:y + side, x:x + side]


class BankDataset(Dataset):
    """A fixed set of (HR, LR) crops made once: no decoding or degradation cost while training.

    Small models on a GPU train faster than a CPU can degrade images; a bank of a few thousand pairs, with
    the 8 flips/rotations applied per sample, keeps the GPU busy. ``__getitem__`` takes the same
    ``(index, seed)`` keys as :class:`PairDataset`.
    """

    def __init__(self, hr: torch.Tensor, lr: torch.Tensor, flip: bool = True):
        self.hr, self.lr, self.flip = hr, lr, flip

    @classmethod
    def build(cls, source: PairDataset, size: int, seed: int, num_workers: int = 0) -> "BankDataset":
        keys = [(i % len(source), sample_seed(seed, -1, i)) for i in range(size)]
        loader = torch.utils.data.DataLoader(_KeyedView(source, keys), batch_size=64, num_workers=num_workers)
        hr, lr = [], []
        for batch in loader:
            hr.append(batch["hr"])
            lr.append(batch["lr"])
        return cls(torch.cat(hr), torch.cat(lr), flip=source.flip)

    def __len__(self) -> int:
        return len(self.hr)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        hr, lr = self.hr[index], self.lr[index]
        if self.flip:
            code = int(torch.randint(8, (), generator=torch.Generator().manual_seed(seed)))
            hr, lr = _dihedral(hr, code), _dihedral(lr, code)
        return {"hr": hr.contiguous(), "lr": lr.contiguous()}


class _KeyedView(Dataset):
    def __init__(self, dataset: Dataset, keys: Sequence[tuple[int, int]]):
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        return self.dataset[self.keys[i]]


def to_model_inputs(batch: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 crops to (HR, LR resized to the HR size), both in [-1, 1]; bilinear as the pipeline does."""
    hr = batch["hr"].to(dtype) / 127.5 - 1.0
    lr = batch["lr"].to(dtype) / 127.5 - 1.0
    lr_up = F.interpolate(lr, size=hr.shape[-2:], mode="bilinear", align_corners=False)
    return hr, lr_up


def build_dataset(config: DataConfig, seed: int) -> Dataset:
    """The training dataset described by the ``data`` section of a config."""
    pairs = PairDataset(config.hr, scale=config.scale, crop=config.crop, lr=config.lr,
                        degradation=config.degradation, mix_prob=config.mix_realesrgan_prob,
                        mix_mild_prob=config.mix_mild_prob, realesrgan=RealESRGANConfig.from_dict(config.realesrgan),
                        mild=MildConfig.from_dict(config.mild), cache=config.cache,
                        max_side=config.max_side, min_side=config.min_side, repeat=config.repeat,
                        flip=config.flip, flat_prob=config.flat_prob)
    if config.bank:
        return BankDataset.build(pairs, config.bank, seed, num_workers=config.num_workers)
    return pairs


@dataclass
class ValidationImage:
    name: str
    hr: torch.Tensor   # uint8 (3,H,W)
    lr: torch.Tensor   # uint8 (3,H/scale,W/scale)


def load_validation(hr: str | Path, lr: Optional[str | Path], scale: int, crop: int,
                    max_images: int) -> list[ValidationImage]:
    """Centre crops (side at most ``crop``, a multiple of ``scale``) of validation images with their LR.

    Without an LR folder the LR is the bicubic downscale of the HR crop.
    """
    lr_by_name = {_stem_key(p, Path(lr)): p for p in list_images(lr)} if lr is not None else {}
    images, skipped = [], []
    for path in list_images(hr)[:max_images]:
        try:
            full = read_image(path)
            partner = read_image(lr_by_name[_stem_key(path, Path(hr))]) if lr is not None else None
        except (OSError, ValueError, SyntaxError, KeyError) as error:
            skipped.append(f"{path} ({error!r})")
            continue
        if partner is not None:
            lr_h, lr_w = (min(partner.shape[1], crop // scale), min(partner.shape[2], crop // scale))
            top, left = (partner.shape[1] - lr_h) // 2, (partner.shape[2] - lr_w) // 2
            lr_crop = partner[:, top:top + lr_h, left:left + lr_w]
            hr_crop = full[:, top * scale:(top + lr_h) * scale, left * scale:(left + lr_w) * scale]
        else:
            h, w = (min(full.shape[1], crop) // scale * scale, min(full.shape[2], crop) // scale * scale)
            top, left = (full.shape[1] - h) // 2, (full.shape[2] - w) // 2
            hr_crop = full[:, top:top + h, left:left + w].contiguous()
            lr_crop = bicubic_downscale(hr_crop, scale)
        images.append(ValidationImage(path.stem, hr_crop.contiguous(), lr_crop.contiguous()))
    if skipped:
        logger.warning("validation: skipped %d file(s), e.g. %s", len(skipped), skipped[0])
    return images
