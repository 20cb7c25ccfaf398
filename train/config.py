"""Training configuration: built-in defaults, a YAML file over them, ``--set key=value`` over that.

Every option has a default here, so a YAML file only says what it changes and a typo (an unknown key) is an
error instead of a silently ignored setting. Dicts whose default is empty (``model.config``,
``data.realesrgan``, ``data.mild``) are free-form: their keys are checked by the code that reads them.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

DEFAULTS: dict[str, Any] = {
    "stage": 1,                       # 1: SR-flow pre-training; 2: consistency distillation
    "seed": 0,
    "output_dir": "runs/flowsr",
    "model": {
        "type": "tiny",               # tiny (built-in architecture, trained in full) | sd (SD 2.1 + LoRA)
        "config": {},                 # tiny: TinyFlowSR config; empty = the built-in architecture
        "init": None,                 # a flowsr.safetensors to start from (stage 2: the stage-1 export)
        "base_model": None,           # sd: SD 2.1-base diffusers folder or single .safetensors file
        "unet_lora": {"rank": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out",
                                                    "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                                                    "conv_shortcut", "conv_in", "conv_out"]},
        "vae_lora": {"rank": 0, "target_modules": ["conv1", "conv2", "conv_in", "conv_shortcut", "conv",
                                                   "conv_out", "to_q", "to_k", "to_v", "to_out.0"]},
        "gradient_checkpointing": False,
    },
    "data": {
        "hr": None,                   # folder of HR images, or a .txt file listing them
        "lr": None,                   # optional folder of paired LR images (same relative names)
        "scale": 4,
        "crop": 128,                  # HR crop side, a multiple of scale
        "degradation": "realesrgan",  # realesrgan | bicubic | mild | mix
        "mix_realesrgan_prob": 0.5,   # mix: share of samples degraded the Real-ESRGAN way
        "mix_mild_prob": 0.0,         # mix: share degraded the mild way (the rest of a mix is bicubic)
        "realesrgan": {},             # overrides of train.degradations.RealESRGANConfig
        "mild": {},                   # overrides of train.degradations.MildConfig
        "max_side": None,             # shrink HR photos whose longer side exceeds this (before cropping)
        "min_side": None,             # skip HR images whose shorter side is below this (default: crop)
        "cache": True,                # decode every image once and keep it in memory
        "bank": 0,                    # > 0: make this many (HR, LR) crops once and train on them
        "repeat": 1,                  # crops drawn per image per epoch
        "flip": True,                 # random horizontal flips and 90-degree rotations
        "flat_prob": 0.0,             # share of made-on-the-fly pairs replaced by one flat colour (HR and its LR)
        "batch_size": 8,              # per process
        "num_workers": 2,
    },
    "train": {
        "max_steps": 1000,            # optimizer steps
        "lr": 1.0e-4,
        "weight_decay": 0.0,
        "adam_betas": [0.9, 0.999],
        "lr_schedule": "constant",    # any diffusers.optimization scheduler name: constant, cosine, linear...
        "lr_warmup_steps": 0,
        "grad_clip": 1.0,             # 0 = off
        "gradient_accumulation_steps": 1,
        "mixed_precision": "no",      # no | bf16 | fp16
        "cpu": False,                 # force the CPU even when a GPU is present
        "half_frozen": False,         # keep frozen weights (base model, teacher) in the mixed-precision dtype
    },
    "stage1": {
        "t_sampling": "uniform",      # uniform | logit_normal | fast_grid
        "logit_normal": {"mean": 0.0, "std": 1.0},
        "fast_steps": 4,              # fast_grid: t drawn from {1/N, ..., 1}
        "t_one_prob": 0.0,            # share of samples at exactly t = 1, the one-step inference point
        "weights": {"l2": 1.0, "lpips": 1.0, "latent_mse": 0.0},
    },
    "stage2": {
        "teacher": None,              # the stage-1 export; defaults to model.init
        "ema_decay": 0.99,            # target theta_minus = EMA of the student
        "n_fast": 4,
        "n_slow": 1000,
        # Probability of each way of drawing the pair t < t' (train.timesteps):
        "pairs": {"slow_to_fast": 0.5, "fast_to_slow": 0.5, "fast": 0.0, "slow": 0.0},
        "weights": {"cd": 1.0, "hr": 1.0, "flow": 1.0, "adv": 0.05, "iqa": 0.1},  # 0 = off
        "distance": {"l2": 1.0, "lpips": 1.0},   # d(a, b) = l2 * MSE + lpips * LPIPS
        "adv": {"loss": "hinge", "start_step": 0, "lr": 1.0e-4, "betas": [0.5, 0.999],
                "channels": 64, "layers": 3, "spectral_norm": True},
        "iqa": {"positive": "Good photo.", "negative": "Bad photo.", "temperature": 100.0},
    },
    "lpips": {
        "package": True,              # use the lpips package when it imports and has its weights
        "vgg_weights": None,          # or: torchvision's vgg16 weights file (.pth / .safetensors) ...
        "linear_weights": None,       # ... and LPIPS' linear layers (lpips/weights/v0.1/vgg.pth)
    },
    "clip": {"path": None},           # a local CLIP model folder (transformers layout) for L_iqa
    "export": {"dtype": "fp32"},      # flowsr.safetensors tensors: fp32 | fp16 | bf16 (fp16 halves a small model)
    "log": {"every": 10, "tensorboard": True},
    "checkpoint": {"every": 500, "keep": 2, "resume": None},   # resume: null | latest | a checkpoint folder
    "validation": {
        "hr": None,                   # folder of HR images; none = no validation
        "lr": None,                   # optional paired LR folder; else LR = bicubic-downscaled HR
        "every": 500,
        "max_images": 8,
        "crop": 256,                  # centre-crop HR images to at most this side
        "steps": [1],                 # inference step counts to validate
        "schedule": "uniform",
        "color_fix": "wavelet",       # as the pipeline's default: what users get
        "ssimulacra2": True,          # when the ssimulacra2 package is installed
        "save_images": True,
    },
}


class ConfigError(ValueError):
    """A config file or override the trainer cannot use; the message names the key."""


def _check_and_merge(base: dict, update: dict, where: str) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if base and key not in base:
            hint = difflib.get_close_matches(str(key), [str(k) for k in base], n=1)
            raise ConfigError(f"unknown config key {path!r}" + (f"; did you mean {where + hint[0]!r}?" if hint else ""))
        if isinstance(base.get(key), dict) and base[key] and isinstance(value, dict):
            merged[key] = _check_and_merge(base[key], value, path + ".")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> dict:
    """``a.b.c=value`` to ``{"a": {"b": {"c": value}}}``; the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()   # YAML 1.1 reads no/yes/on/off as booleans: mixed_precision=no means "no"
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config(path: Optional[str | Path] = None, overrides: Iterable[str] = ()) -> dict:
    """Defaults, then the YAML file at ``path``, then each ``key=value`` override."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        with open(path, encoding="utf-8") as f:
            from_file = yaml.safe_load(f) or {}
        if not isinstance(from_file, dict):
            raise ConfigError(f"{path} must hold a YAML mapping at its top level")
        config = _check_and_merge(config, from_file, "")
    for text in overrides:
        config = _check_and_merge(config, parse_override(text), "")
    return config


def dump_config(config: dict, path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
