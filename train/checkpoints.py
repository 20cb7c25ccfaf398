"""Periodic, atomic, exactly resumable training checkpoints.

A checkpoint is a folder ``checkpoints/step_00001000``: accelerate's ``save_state`` (trainable weights,
optimisers, LR schedulers, every process's RNG states) plus our own files, none of them pickled:
``trainer_state_<process>.json`` (step, epoch, position in the epoch, the training generator) and named
safetensors files (the EMA weights), and the exported ``flowsr.safetensors`` of that step.

Atomicity: everything is written to ``step_N.tmp`` and renamed to ``step_N`` only when complete, so a crash
mid-write leaves the previous checkpoint as the latest good one; a leftover ``.tmp`` is never resumed from.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

PREFIX = "step_"


@dataclass
class TrainerState:
    """Where training is: optimiser steps done, and the data position (epoch, batches of it consumed)."""
    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{PREFIX}{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (folders being written end in ``.tmp`` and are ignored)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_resume(output_dir: str | Path, resume: Optional[str]) -> Optional[Path]:
    """``None``: start fresh; ``latest``: the newest complete checkpoint, if any; else a checkpoint folder."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("checkpoint.resume is 'latest' but %s has no checkpoint yet: starting fresh", output_dir)
            return None
        return found[-1]
    path = Path(resume)
    if not (path / "trainer_state_0.json").is_file():
        raise FileNotFoundError(f"checkpoint.resume {resume} is not a complete checkpoint folder "
                                "(no trainer_state_0.json); give a checkpoints/step_* folder or 'latest'")
    return path


def register_trainable_only(accelerator) -> None:
    """Make ``save_state`` store only trainable weights: a LoRA run's checkpoint holds the LoRA, not the base model.

    Frozen weights are rebuilt from the config on resume, so ``load_state`` must be called with ``strict=False``.
    """
    def drop_frozen(models, weights, output_dir):
        for model, state in zip(models, weights):
            for name, parameter in model.named_parameters():
                if not parameter.requires_grad:
                    state.pop(name, None)

    accelerator.register_save_state_pre_hook(drop_frozen)


def _generator_state(generator: torch.Generator) -> str:
    return base64.b64encode(generator.get_state().numpy().tobytes()).decode("ascii")


def _set_generator_state(generator: torch.Generator, encoded: str) -> None:
    raw = bytearray(base64.b64decode(encoded))
    generator.set_state(torch.frombuffer(raw, dtype=torch.uint8).clone())


def save_checkpoint(accelerator, output_dir: str | Path, state: TrainerState, generator: torch.Generator,
                    tensors: dict[str, dict[str, torch.Tensor]], write_files: Optional[Callable[[Path], None]] = None,
                    keep: int = 2) -> Path:
    """Write a complete checkpoint for ``state.step`` atomically; keep the newest ``keep`` (0 = all).

    Every process must call this. ``tensors`` are named state dicts saved as safetensors by the main process;
    ``write_files(folder)`` adds files (the export) on the main process before the folder is published.
    """
    final = checkpoint_dir(output_dir, state.step)
    temporary = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    own = {**asdict(state), "generator": _generator_state(generator)}
    (temporary / f"trainer_state_{accelerator.process_index}.json").write_text(json.dumps(own), encoding="utf-8")
    if accelerator.is_main_process:
        for name, state_dict in tensors.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
                      str(temporary / f"{name}.safetensors"))
        if write_files is not None:
            write_files(temporary)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        if keep:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: str | Path, generator: torch.Generator,
                    tensor_names: tuple[str, ...] = ()) -> tuple[TrainerState, dict[str, dict[str, torch.Tensor]]]:
    """Restore what :func:`save_checkpoint` wrote; returns the trainer state and the named tensors."""
    folder = Path(folder)
    own_file = folder / f"trainer_state_{accelerator.process_index}.json"
    if not own_file.is_file():
        raise FileNotFoundError(f"{folder} was saved by fewer processes than run now (no {own_file.name}); "
                                "resume with the same number of processes for an exact continuation")
    accelerator.load_state(str(folder), strict=False)
    own = json.loads(own_file.read_text(encoding="utf-8"))
    _set_generator_state(generator, own.pop("generator"))
    tensors = {name: load_file(str(folder / f"{name}.safetensors")) for name in tensor_names}
    logger.info("resumed from %s at step %d", folder, own["step"])
    return TrainerState(**own), tensors
