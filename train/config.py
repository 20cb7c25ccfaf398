"""Training configuration: typed defaults (the dataclasses below), a YAML file over them, ``--set key=value`` over that.

Every option has a default and a type here, so a YAML file only says what it changes, a typo (an unknown key)
is an error instead of a silently ignored setting, and a wrongly typed value is an error naming its key.
Fields typed ``dict`` (``model.config``, ``data.realesrgan``, ``data.mild``) are free-form: their keys are
checked by the code that reads them. We keep this small loader instead of OmegaConf (not a dependency) because
``--set`` must read YAML 1.1's yes/no words as words and numbers such as ``1e-4`` as numbers.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

SD_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                   "conv2", "conv_shortcut", "conv_in", "conv_out"]
SD_VAE_TARGETS = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class LoraConfig:
    rank: int = 4                     # 0 = no LoRA on this part
    target_modules: list = field(default_factory=lambda: list(SD_UNET_TARGETS))


@dataclass
class ModelConfig:
    type: str = "tiny"                # tiny (built-in architecture, trained in full) | sd (SD 2.1 + LoRA)
    config: dict = field(default_factory=dict)   # tiny: TinyFlowSR config; empty = the built-in architecture
    init: Optional[str] = None        # a flowsr.safetensors to start from (stage 2: the stage-1 export)
    base_model: Optional[str] = None  # sd: SD 2.1-base diffusers folder or single .safetensors file
    unet_lora: LoraConfig = field(default_factory=LoraConfig)
    vae_lora: LoraConfig = field(default_factory=lambda: LoraConfig(0, list(SD_VAE_TARGETS)))
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    hr: Optional[str] = None          # folder of HR images, or a .txt file listing them
    lr: Optional[str] = None          # optional folder of paired LR images (same relative names)
    scale: int = 4
    crop: int = 128                   # HR crop side, a multiple of scale
    degradation: str = "realesrgan"   # realesrgan | bicubic | mild | mix
    mix_realesrgan_prob: float = 0.5  # mix: share of samples degraded the Real-ESRGAN way
    mix_mild_prob: float = 0.0        # mix: share degraded the mild way (the rest of a mix is bicubic)
    realesrgan: dict = field(default_factory=dict)   # overrides of train.degradations.RealESRGANConfig
    mild: dict = field(default_factory=dict)         # overrides of train.degradations.MildConfig
    max_side: Optional[int] = None    # shrink HR photos whose longer side exceeds this (before cropping)
    min_side: Optional[int] = None    # skip HR images whose shorter side is below this (default: crop)
    cache: bool = True                # decode every image once and keep it in memory
    bank: int = 0                     # > 0: make this many (HR, LR) crops once and train on them
    repeat: int = 1                   # crops drawn per image per epoch
    flip: bool = True                 # random horizontal flips and 90-degree rotations
    flat_prob: float = 0.0            # share of made-on-the-fly pairs replaced by one flat colour (HR and its LR)
    batch_size: int = 8               # per process
    num_workers: int = 2


@dataclass
class OptimConfig:
    max_steps: int = 1000             # optimizer steps
    lr: float = 1.0e-4
    weight_decay: float = 0.0
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    lr_schedule: str = "constant"     # any diffusers.optimization scheduler name: constant, cosine, linear...
    lr_warmup_steps: int = 0
    grad_clip: float = 1.0            # 0 = off
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"       # no | bf16 | fp16
    cpu: bool = False                 # force the CPU even when a GPU is present
    half_frozen: bool = False         # keep frozen weights (base model, teacher) in the mixed-precision dtype


@dataclass
class LogitNormalConfig:
    mean: float = 0.0
    std: float = 1.0


@dataclass
class Stage1Weights:
    l2: float = 1.0
    lpips: float = 1.0
    latent_mse: float = 0.0


@dataclass
class Stage1Config:
    t_sampling: str = "uniform"       # uniform | logit_normal | fast_grid
    logit_normal: LogitNormalConfig = field(default_factory=LogitNormalConfig)
    fast_steps: int = 4               # fast_grid: t drawn from {1/N, ..., 1}
    t_one_prob: float = 0.0           # share of samples at exactly t = 1, the one-step inference point
    weights: Stage1Weights = field(default_factory=Stage1Weights)


@dataclass
class PairRules:
    """Probability of each way of drawing the pair t < t' (train.timesteps); a YAML mapping merges over these."""
    slow_to_fast: float = 0.5
    fast_to_slow: float = 0.5
    fast: float = 0.0
    slow: float = 0.0


@dataclass
class Stage2Weights:                  # 0 = off
    cd: float = 1.0
    hr: float = 1.0
    flow: float = 1.0
    adv: float = 0.05
    iqa: float = 0.1


@dataclass
class DistanceConfig:                 # d(a, b) = l2 * MSE + lpips * LPIPS
    l2: float = 1.0
    lpips: float = 1.0


@dataclass
class AdversarialConfig:
    loss: str = "hinge"
    start_step: int = 0
    lr: float = 1.0e-4
    betas: list = field(default_factory=lambda: [0.5, 0.999])
    channels: int = 64
    layers: int = 3
    spectral_norm: bool = True


@dataclass
class IQAConfig:
    positive: str = "Good photo."
    negative: str = "Bad photo."
    temperature: float = 100.0


@dataclass
class Stage2Config:
    teacher: Optional[str] = None     # the stage-1 export; defaults to model.init
    ema_decay: float = 0.99           # target theta_minus = EMA of the student
    n_fast: int = 4
    n_slow: int = 1000
    pairs: PairRules = field(default_factory=PairRules)
    weights: Stage2Weights = field(default_factory=Stage2Weights)
    distance: DistanceConfig = field(default_factory=DistanceConfig)
    adv: AdversarialConfig = field(default_factory=AdversarialConfig)
    iqa: IQAConfig = field(default_factory=IQAConfig)


@dataclass
class LPIPSConfig:
    package: bool = True              # use the lpips package when it imports and has its weights
    vgg_weights: Optional[str] = None     # or: torchvision's vgg16 weights file (.pth / .safetensors) ...
    linear_weights: Optional[str] = None  # ... and LPIPS' linear layers (lpips/weights/v0.1/vgg.pth)


@dataclass
class IQAModelConfig:
    path: Optional[str] = None        # a local CLIP model folder (transformers layout) for L_iqa


@dataclass
class ExportConfig:
    dtype: str = "fp32"               # flowsr.safetensors tensors: fp32 | fp16 | bf16 (fp16 halves a small model)


@dataclass
class LogConfig:
    every: int = 10
    tensorboard: bool = True


@dataclass
class CheckpointConfig:
    every: int = 500
    keep: int = 2
    resume: Optional[str] = None      # null | latest | a checkpoint folder


@dataclass
class ValidationConfig:
    hr: Optional[str] = None          # folder of HR images; none = no validation
    lr: Optional[str] = None          # optional paired LR folder; else LR = bicubic-downscaled HR
    every: int = 500
    max_images: int = 8
    crop: int = 256                   # centre-crop HR images to at most this side
    steps: list = field(default_factory=lambda: [1])   # inference step counts to validate
    schedule: str = "uniform"
    color_fix: str = "wavelet"        # as the pipeline's default: what users get
    ssimulacra2: bool = True          # when the ssimulacra2 package is installed
    save_images: bool = True


@dataclass
class TrainConfig:
    stage: int = 1                    # 1: SR-flow pre-training; 2: consistency distillation
    seed: int = 0
    output_dir: str = "runs/flowsr"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    clip: IQAModelConfig = field(default_factory=IQAModelConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


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


def _typed(kind: Any, value: Any, path: str) -> Any:
    """``value`` checked against the field type ``kind`` (numbers widen to float; YAML's "1e-4" is a float)."""
    if typing.get_origin(kind) is typing.Union:       # Optional[X]
        if value is None:
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping of {[f.name for f in dataclasses.fields(kind)]}, got {value!r}")
        return _build(kind, value, path + ".")
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        hint = " (YAML reads no/yes/on/off as booleans: quote the word)" if kind is str and isinstance(value, bool) else ""
        raise ConfigError(f"{path} must be a {kind.__name__}, got {value!r}{hint}")
    return value


def _build(cls: type, values: dict, where: str):
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _typed(hints[f.name], values[f.name], where + f.name) for f in dataclasses.fields(cls)})


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


def load_config(path: Optional[str | Path] = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file at ``path``, then each ``key=value`` override, checked against the types."""
    values = dataclasses.asdict(TrainConfig())
    if path is not None:
        with open(path, encoding="utf-8") as f:
            from_file = yaml.safe_load(f) or {}
        if not isinstance(from_file, dict):
            raise ConfigError(f"{path} must hold a YAML mapping at its top level")
        values = _check_and_merge(values, from_file, "")
    for text in overrides:
        values = _check_and_merge(values, parse_override(text), "")
    return _build(TrainConfig, values, "")


def config_dict(config: TrainConfig) -> dict:
    """The config as plain YAML/JSON-ready data."""
    return dataclasses.asdict(config)


def dump_config(config: TrainConfig, path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_dict(config), f, sort_keys=False)
