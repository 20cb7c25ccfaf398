"""Every upscale option once: its default, its range, its help and what leaving it automatic means.

The command line (:func:`add_upscale_options`), the ComfyUI nodes (``nodes/spec.py``) and the AUTOMATIC1111
settings (``scripts/flowsr_upscaler.py``) are generated from these definitions, and :func:`check_upscale_options`
is the one validation that the pipeline, the command line and the hosts call. Nothing here loads a model, so
options can be checked before any work starts.

``None`` is "automatic" in Python and on the command line (the flag left out). Number fields of hosts cannot be
empty (ComfyUI's INT widgets, A1111's sliders): there :data:`AUTOMATIC` (-1) stands for it.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Mapping, Optional

from .color import COLOR_FIXES
from .devices import DTYPES
from .errors import BadInputError
from .flow import SCHEDULES
from .tiling import MIN_TILE_SIZE, max_overlap

#: How number fields of hosts spell "automatic" (None).
AUTOMATIC = -1
#: The largest seed torch.Generator takes (and ComfyUI's INT widgets hold).
MAX_SEED = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Option:
    """One option. ``automatic`` says what ``None`` means; empty where the option must have a value."""
    name: str
    type: type  # int, float, str or bool
    default: Any
    help: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: tuple[str, ...] = ()
    automatic: str = ""
    #: Values outside the range that still mean something, with what they mean (tile size 0: no tiling).
    special: Mapping[int, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How messages name the option: ``tile size``."""
        return self.name.replace("_", " ").replace("color", "colour")

    @property
    def lowest(self) -> Optional[float]:
        """The smallest value a host's number field must accept, :data:`AUTOMATIC` included."""
        candidates = [self.minimum, *self.special] + ([AUTOMATIC] if self.automatic else [])
        return min((c for c in candidates if c is not None), default=None)

    def to_host(self, value: Any) -> Any:
        """A value as a host's field holds it: automatic as :data:`AUTOMATIC`."""
        return AUTOMATIC if value is None and self.automatic else value

    def from_host(self, value: Any) -> Any:
        """A host's field value as flowsr takes it: :data:`AUTOMATIC` as None, a whole float (sliders save
        floats) as an int. Anything else is passed on for :func:`check_option` to judge."""
        if self.automatic and value == AUTOMATIC:
            return None
        if self.type is int and isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    def describe(self, automatic_spelling: str = str(AUTOMATIC)) -> str:
        """The help and every meaningful value: ``... -1: chosen from free memory. 0: off.``"""
        notes = [(automatic_spelling, self.automatic)] if self.automatic else []
        notes += list(self.special.items())
        limits = [f"From {_number(self.minimum)} to {_number(self.maximum)}."] if self.minimum is not None else []
        return " ".join([self.help, *limits, *(f"{value}: {meaning}." for value, meaning in notes)])


def _number(value: Real) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


SCALE = Option("scale", float, 4.0, "How many times larger the output is, on each side.", minimum=1.0, maximum=8.0)
STEPS = Option("steps", int, 1, "Flow steps: 1 is FlowSR's distilled one-step result; more steps refine it, each "
               "as costly as one step.", minimum=1, maximum=50)
SCHEDULE = Option("schedule", str, "uniform", "Where the steps (when more than one) fall on the flow from the "
                  "input (t=1) to the result (t=0): uniform is the paper's even grid; sd3 is the shifted grid of "
                  "the reference implementation, with more steps near the input.", choices=tuple(SCHEDULES))
TILE_SIZE = Option("tile_size", int, None, "Tile side in latent pixels (x8 image pixels for SD 2.1, x4 for the "
                   "built-in model): big images are upscaled tile by tile so memory stays bounded. Smaller tiles "
                   "need less memory; out of memory, tiles shrink by themselves.", minimum=MIN_TILE_SIZE,
                   maximum=1024, automatic="chosen from free memory (no tiles when the whole image fits; on a "
                                           "CPU at most the model's CPU tile, so that Cancel answers at once)",
                   special={0: "off"})
TILE_OVERLAP = Option("tile_overlap", int, None, "Latent pixels that neighbouring tiles share and blend, hiding "
                      "seams; at most half the tile.", minimum=0, maximum=512,
                      automatic="the model's default, at most a third of the tile")
TILE_BATCH = Option("tile_batch", int, None, "Tiles per network call.", minimum=1, maximum=64,
                    automatic="from free memory with automatic tiles on a GPU; otherwise 1")
COLOR_FIX = Option("color_fix", str, "wavelet", "Match colours to the input: wavelet keeps the output's detail "
                   "and the input's colour (recommended), adain matches each channel's mean and spread; both keep "
                   "flat areas of the input flat. none keeps the model's output as it is.", choices=COLOR_FIXES)
SEED = Option("seed", int, None, "Sample the encoder's latent with this seed, as the reference implementation "
              "does (slightly different grain per seed).", minimum=0, maximum=MAX_SEED,
              automatic="the mean of the encoder's latent (no sampling), the same output every run")
DTYPE = Option("dtype", str, "auto", "Precision of the weights: auto is bf16 on CUDA where supported, fp16 on "
               "other GPUs and fp32 on the CPU; fp32 is the most exact and takes twice the memory of fp16/bf16; "
               "fp16 is refused on the CPU (many times slower there).",
               choices=("auto", *DTYPES))
COMPILE = Option("compile", bool, False, "Compile the UNet's blocks with torch.compile, for faster network calls "
                 "where the README's speed table shows a gain; the first call of each new tile shape waits for the "
                 "compiler (minutes on a 2-core CPU, much less once PyTorch's disk cache holds the code). Needs a "
                 "C++ compiler (CPU) or Triton (CUDA); without one, or if compiling fails, FlowSR says so and runs "
                 "uncompiled.")

#: The options of :meth:`flowsr.FlowSRPipeline.upscale_tensor`, by keyword.
UPSCALE_OPTIONS = {option.name: option for option in
                   (SCALE, STEPS, SCHEDULE, TILE_SIZE, TILE_OVERLAP, TILE_BATCH, COLOR_FIX, SEED)}
#: The options of :meth:`flowsr.FlowSRPipeline.from_pretrained` that every host offers alike.
LOAD_OPTIONS = {option.name: option for option in (DTYPE, COMPILE)}


def problem(option: Option, value: Any) -> Optional[str]:
    """What is wrong with ``value`` (``"must be ..., got ..."``), or None when the option takes it."""
    if value is None:
        return None if option.automatic else "must be set, got nothing (None)"
    if option.choices:
        return None if value in option.choices else f"must be one of {', '.join(option.choices)}, got {value!r}"
    if option.type is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int if option.type is int else Real):
        kind = "a whole number" if option.type is int else "a number"
        return f"must be {kind}, got {value!r}"
    if value in option.special or option.minimum <= value <= option.maximum:
        return None
    allowed = [f"{special} ({meaning})" for special, meaning in option.special.items()]
    low, high = _number(option.minimum), _number(option.maximum)
    allowed.append(f"at least {low} and at most {high}" if allowed else f"between {low} and {high}")
    return f"must be {' or '.join(allowed)}, got {_number(value)}"


def check_option(option: Option, value: Any, label: Optional[str] = None) -> None:
    """Raise a BadInputError naming ``label`` (else the option) when the option cannot take ``value``."""
    wrong = problem(option, value)
    if wrong is not None:
        raise BadInputError(f"{label or option.label} {wrong}")


def check_upscale_options(values: Mapping[str, Any], labels: Optional[Mapping[str, str]] = None) -> None:
    """Check upscale options by keyword (those left out keep their defaults, which are valid) before any work.

    The first wrong one raises a BadInputError that names it by ``labels`` (e.g. ``{"scale": "--scale"}``), else
    by its :attr:`Option.label`. The overlap is checked against a fixed tile here; against an automatic tile
    only the pipeline can.
    """
    labels = labels or {}
    unknown = sorted(set(values) - set(UPSCALE_OPTIONS))
    if unknown:
        raise TypeError(f"not upscale options: {', '.join(unknown)}")
    for name, value in values.items():
        check_option(UPSCALE_OPTIONS[name], value, labels.get(name))
    tile, overlap = values.get("tile_size"), values.get("tile_overlap")
    if tile and overlap is not None and overlap > max_overlap(tile):
        raise BadInputError(f"{labels.get('tile_overlap', TILE_OVERLAP.label)} must be at most half the tile size "
                            f"({tile}), got {overlap}")


def add_upscale_options(parser: argparse.ArgumentParser) -> None:
    """The upscale options and the precision as command-line flags (``--tile-size``...).

    Check the parsed upscale options with ``check_upscale_options(..., labels=cli_labels())``.
    """
    for option in [*UPSCALE_OPTIONS.values(), *LOAD_OPTIONS.values()]:
        default = "" if option.automatic else f" Default: {option.default}."
        if option.type is bool:
            parser.add_argument(f"--{option.name.replace('_', '-')}", action=argparse.BooleanOptionalAction,
                                default=option.default, help=option.help + " Default: off.")
            continue
        parser.add_argument(f"--{option.name.replace('_', '-')}", type=option.type, default=option.default,
                            choices=option.choices or None, metavar=None if option.choices else "N",
                            help=option.describe("Left out") + default)


def cli_labels() -> dict[str, str]:
    """How the command line names each option in messages: ``--tile-size``."""
    return {name: f"--{name.replace('_', '-')}" for name in UPSCALE_OPTIONS}
