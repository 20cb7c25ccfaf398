"""Loads the A1111 extension against the stand-ins in ./standins, the way A1111 v1.10.1 does.

A1111 first runs each extension's preload.py ``preload(parser)`` before it parses the command line, then
imports ``scripts/*.py`` with importlib (module name = the file name) while the extension folder is on sys.path,
and builds its upscaler list with modelloader.load_upscalers(). Each test gets fresh modules and a fresh
models folder; nothing leaks into other test folders.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "standins"
HOST_MODULES = ("modules", "launch")
#: The gradio components a setting may name; registering a setting only passes the class on.
GRADIO_COMPONENTS = ("Slider", "Radio", "Dropdown", "Textbox", "Checkbox", "Number")
#: A small TinyFlowSR (the built-in architecture, narrower): a fast real model for the end-to-end tests.
SMALL_CONFIG = {"latent_factor": 4, "unet": {"block_out_channels": [16, 16], "down_block_types": ["DownBlock2D"] * 2,
                                             "up_block_types": ["UpBlock2D"] * 2, "layers_per_block": 1,
                                             "norm_num_groups": 8}}


def load_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_small_model(path: Path, seed: int = 0) -> Path:
    from flowsr.models.tiny import TinyFlowSR, save_tiny

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tiny(TinyFlowSR(SMALL_CONFIG), path)
    return path


def _forget_host_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in HOST_MODULES or name == "flowsr_upscaler.py":
            del sys.modules[name]


def reforge_load_upscalers() -> None:
    """reForge 3b56b26's ``modelloader.load_upscalers``: a fixed list of its own classes (none here), never the
    subclasses of ``Upscaler`` as A1111's."""
    from modules import shared

    shared.sd_upscalers = []


@pytest.fixture
def start_a1111(tmp_path, monkeypatch):
    """``start_a1111(*argv, saved=None, forge=False, reforge=False)``: an A1111 started with ``argv``, the extension
    loaded and the upscalers listed. ``saved``: settings config.json held (A1111 loads it before the scripts).
    ``forge``: load the scripts as Forge does, its built-in ControlNet first, which imports modules.api (and so
    builds the options model of GET /sdapi/v1/options) before this extension's script runs. ``reforge``: list
    the upscalers as reForge does."""
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.syspath_prepend(str(STANDINS))
    _forget_host_modules()

    def start(*argv: str, saved: Optional[dict] = None, forge: bool = False, reforge: bool = False) -> SimpleNamespace:
        from modules import cmd_args, devices, modelloader, paths, paths_internal, shared

        for module in (paths_internal, paths, shared):
            module.models_path = str(models)
        load_file(REPO / "preload.py", "preload.py").preload(cmd_args.parser)
        shared.cmd_opts = cmd_args.parser.parse_args(list(argv))
        gradio = SimpleNamespace(**{name: type(name, (), {}) for name in GRADIO_COMPONENTS})
        monkeypatch.setitem(sys.modules, "gradio", gradio)  # A1111 always has it: modules.shared imports it
        shared.opts.data.update(saved or {})
        if forge:
            importlib.import_module("modules.api.api")
        if reforge:
            monkeypatch.setattr(modelloader, "load_upscalers", reforge_load_upscalers)
        with monkeypatch.context() as during_load:  # A1111 puts the extension on sys.path while loading
            during_load.syspath_prepend(str(REPO))
            script = load_file(REPO / "scripts" / "flowsr_upscaler.py", "flowsr_upscaler.py")
        modelloader.load_upscalers()
        api = importlib.import_module("modules.api.api")  # webui.py's create_api(), after the scripts
        return SimpleNamespace(api=api, shared=shared, devices=devices, script=script, models=models, gradio=gradio,
                               modelloader=modelloader, upscalers={u.name: u for u in shared.sd_upscalers})

    yield start
    _forget_host_modules()


@pytest.fixture
def small_model():
    """``small_model(path)`` writes a small full-model file (no base model needed) and returns its path."""
    return write_small_model


@pytest.fixture
def builtin_small(tmp_path, monkeypatch):
    """Point the built-in model at a small file, so tests don't depend on the shipped weights' size."""
    from flowsr.models import tiny

    path = write_small_model(tmp_path / "builtin" / "flowsr_tiny.safetensors")
    monkeypatch.setattr(tiny, "BUILTIN_WEIGHTS", path)
    return path
