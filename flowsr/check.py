"""``python -m flowsr check FILE``: what a weights file holds, and whether FlowSR can use it.

The answer comes from the header, and for FlowSR's own files also from their values: every tensor is read
once (memory-mapped, one at a time) for NaN and infinity, which a header cannot show.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .families import CROSS_ATTENTION_WIDTHS, base_model_help, family_for_width, family_named
from .lora import UNET_ADAPTER, VAE_ADAPTER, FlowSRLora, LoraPart, TargetModules, parse_lora
from .weights_file import (FLOWSR_LORA, FLOWSR_MODEL, FLOWSR_MODEL_KEY, WeightsFile, non_finite_problem,
                           read_weights_file, shape_problems, wrong_kind_message)


@dataclass
class WeightsReport:
    """What ``check`` prints; ``problems`` empty means the file is usable."""

    lines: list
    problems: list

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def text(self) -> str:
        problems = [f"  - {p}" for p in self.problems] or ["  none"]
        return "\n".join(self.lines + ["problems:"] + problems)


def check_weights(path: str | os.PathLike) -> WeightsReport:
    """Inspect any weights file; raises :class:`CheckpointError` only when it cannot be read at all."""
    file = read_weights_file(path)
    lines = [f"{file.path}: {file.kind}", f"  {len(file.tensors)} tensors, {file.size / 1e6:.1f} MB, "
             f"dtypes {', '.join(sorted({entry['dtype'] for entry in file.tensors.values()}))}"]
    if file.kind == FLOWSR_MODEL:
        return _model_report(file, lines)
    if file.kind != FLOWSR_LORA:
        return WeightsReport(lines, [wrong_kind_message(file)])
    return _lora_report(parse_lora(file), lines)


def _model_report(file: WeightsFile, lines: list) -> WeightsReport:
    """Our full-model format: the config in its metadata must build a model its tensors fit exactly."""
    lines += [f"  metadata: {file.metadata[FLOWSR_MODEL_KEY]}", "  needs no base model"]
    problems = _model_shape_problems(file)
    return WeightsReport(lines, problems or non_finite_problem(file.non_finite()))


def _model_shape_problems(file: WeightsFile) -> list:
    import torch

    from .models.tiny import TinyFlowSR

    try:
        entry = json.loads(file.metadata[FLOWSR_MODEL_KEY])
        if entry.get("architecture") != "tiny":
            return [f"its architecture {entry.get('architecture')!r} is not one this FlowSR knows ('tiny')"]
        with torch.device("meta"):
            expected = {key: tuple(value.shape) for key, value in TinyFlowSR(entry["config"]).state_dict().items()}
    except Exception as error:  # broken JSON or a config the model cannot be built from
        return [f"its '{FLOWSR_MODEL_KEY}' metadata does not describe a model ({type(error).__name__}: {error}); "
                "the file is damaged: download it again"]
    return shape_problems(file.shapes(), expected, complete=True)


def _lora_report(lora: FlowSRLora, lines: list) -> WeightsReport:
    for name, part, adapter in (("UNet", lora.unet, UNET_ADAPTER), ("VAE", lora.vae, VAE_ADAPTER)):
        lines += _describe_part(name, part, adapter)
    width = lora.cross_attention_width
    family = family_for_width(width)
    if width is None:
        lines.append(f"expects base model: {family.name} (the file does not show its cross-attention width)")
    else:
        lines.append(f"expects base model: {family_named(width)} (cross-attention width {width})")
        if width in CROSS_ATTENTION_WIDTHS and family is None:
            lora.problems.append(f"made for {family_named(width)} (width {width}), which FlowSR does not run on: "
                                 f"this file will not load. {base_model_help()}")
    return WeightsReport(lines, lora.problems or non_finite_problem(lora.file.non_finite()))


def _describe_part(name: str, part: LoraPart, adapter: str) -> list:
    if part is None:
        return [f"{name} LoRA: none"]
    lora = [key for key in part.tensor_names if f".{adapter}." in key]
    others = sorted(set(part.tensor_names) - set(lora))
    return [f"{name} LoRA (adapter '{adapter}'): rank {part.rank}, lora_alpha {part.lora_alpha} "
            f"(peft's default; scaling {part.scaling:g})",
            f"  target modules: {_describe_targets(part.target_modules)}",
            f"  {len(part.tensor_names)} tensors: {len(lora)} LoRA, {len(others)} whole weights"
            + (f" ({', '.join(others[:6])}{', ...' if len(others) > 6 else ''})" if others else "")]


def _describe_targets(targets: TargetModules) -> str:
    if isinstance(targets, str):
        return f"regex {targets!r}"
    shown = ", ".join(targets[:12])
    return f"{len(targets)} names: {shown}{', ...' if len(targets) > 12 else ''}"
