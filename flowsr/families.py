"""The base-model families FlowSR's public weights apply to, each described once.

Loading, ``python -m flowsr check``, the ComfyUI nodes and the A1111 script read these entries, so a new
family (SDXL, say) is a model file in ``models/`` plus one entry in ``FAMILIES``. The architecture facts
(cross-attention width, input channels) come from the family's shipped diffusers configs, never restated.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

CONFIGS = Path(__file__).resolve().parent / "models" / "configs"

#: Cross-attention width (the text encoder's hidden size) of the Stable Diffusion families, supported or
#: not: it tells which family a file was made for.
CROSS_ATTENTION_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


@dataclass(frozen=True)
class BaseModelFamily:
    """One base model the public LoRA format applies to, and how users name and find it."""

    name: str
    full_name: str
    #: diffusers-layout configs: ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``.
    config_dir: Path
    #: The usual single-file name, as ComfyUI and A1111 users keep it.
    single_file: str
    #: Recognises single files of this family by their name (the usual renamings included).
    file_name_pattern: re.Pattern
    #: A diffusers folder on the hub with the same files, for those who want one.
    hub_folder: str
    #: The hub repository that holds ``single_file`` at its top level, for downloads by name.
    single_file_repo: str
    #: ``module:Class`` of the FlowSR model built on it (imported only when a model is built).
    model_class: str

    @cached_property
    def unet_config(self) -> dict:
        with open(self.config_dir / "unet" / "config.json", encoding="utf-8") as f:
            return json.load(f)

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet_config["cross_attention_dim"])

    @property
    def in_channels(self) -> int:
        return int(self.unet_config["in_channels"])

    @property
    def help(self) -> str:
        """What to pass as the base model, for error messages and help texts."""
        return (f"FlowSR needs {self.full_name}: a diffusers folder (e.g. the hub repo "
                f"{self.hub_folder}) or the single file {self.single_file}")

    def load_model_class(self) -> type:
        import importlib

        module, _, name = self.model_class.partition(":")
        return getattr(importlib.import_module(module), name)


SD21_BASE = BaseModelFamily(
    name="SD 2.1-base",
    full_name="Stable Diffusion 2.1-base",
    config_dir=CONFIGS / "sd21-base",
    single_file="v2-1_512-ema-pruned.safetensors",
    file_name_pattern=re.compile(r"v2-1_512|2[-_.]?1[-_]base", re.IGNORECASE),
    hub_folder="Manojb/stable-diffusion-2-1-base",
    single_file_repo="Manojb/stable-diffusion-2-1-base",  # a re-upload of stabilityai's removed repository
    model_class="flowsr.models.sd:SDFlowSRModel",
)

FAMILIES = (SD21_BASE,)


def family_named(width: Optional[int]) -> str:
    """The family a cross-attention width belongs to, for messages."""
    return CROSS_ATTENTION_WIDTHS.get(width, "unknown family")


def family_for_width(width: Optional[int]) -> Optional[BaseModelFamily]:
    """The supported family whose UNet attends to ``width``; a file that does not show it gets the first."""
    if width is None:
        return FAMILIES[0]
    return next((family for family in FAMILIES if family.cross_attention_dim == width), None)


def base_model_help(width: Optional[int] = None) -> str:
    """What to pass as the base model, for the family of ``width`` (or the first one)."""
    return (family_for_width(width) or FAMILIES[0]).help
