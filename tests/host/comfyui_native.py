"""The native nodes in a real ComfyUI: Load Checkpoint -> Apply FlowSR -> FlowSR Upscale (ComfyUI model) on a small
SD 2.1-shaped checkpoint (``tiny_sd21.py``) that ComfyUI detects as SD 2.x, checked against the pack's own path.

- exact: one step, fp32, untiled, colour fix off, the saved image within 1 grey level of the pack's result on the
  same files (its single-file loader, peft's LoRA merged), quantised as Save Image does;
- tiled (16-latent tiles) within 1 grey level of the pack's tiled result: the same tiles, blending and GroupNorm
  sharing. Tiled against untiled is reported, not held to 35 dB: on this random model the pack's own path gives
  11 dB too (random weights make no smooth image; the 35 dB of tests/core/test_builtin.py is a trained model's);
- a second upscale loads nothing (no "Requested to load" in the server log while it runs);
- FlowSR stacks with another LoRA (core Load LoRA before Apply FlowSR): at strength 0 the result is the exact
  one, at strength 1 it differs;
- a server started with --fp8_e4m3fn-unet (fp8 storage, fp32 compute) runs, and its difference is reported;
- servers in the modes --lowvram and --novram set load the models in part ("loaded partially" in their logs) and
  give the exact result. ComfyUI 0.3.64 refuses those flags beside --cpu, so ``comfyui_vram_on_cpu.py`` starts
  them: the CPU stands for a small GPU while ComfyUI loads models, and its partial loading runs as there.

The test files are linked into ``models/checkpoints`` and ``models/flowsr`` under the names the shipped workflow
uses, only where no such file exists, and removed afterwards.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import tiny_sd21

#: Where the shipped workflow expects the files: ComfyUI model folder, file name, which test file goes there.
PLACES = (("checkpoints", "v2-1_512-ema-pruned.safetensors", "checkpoint"), ("flowsr", "flowsr.safetensors", "lora"),
          ("loras", "flowsr_test_other_lora.safetensors", "other_lora"))
WORKFLOW = "Upscale with your SD 2.1 checkpoint and FlowSR (Load Checkpoint, Apply FlowSR)"
INPUTS = {"small": 32, "tiles": 96}  # input sides; both upscaled 2x
EXACT = dict(scale=2.0, tile_size=0, tile_overlap=-1, color_fix="none", seed=-1)
TILED = dict(EXACT, tile_size=16, tile_overlap=8)
#: The servers of ComfyUI's options: name, the memory mode comfyui_vram_on_cpu.py starts it in (or None), flags.
OPTION_SERVERS = (("--fp8_e4m3fn-unet", None, ["--fp8_e4m3fn-unet"]), ("--lowvram", "lowvram", []),
                  ("--novram", "novram", []))
PARTIAL_LOAD_LINE = "loaded partially"
LOAD_LINE = "Requested to load"


class TestModels:
    """The test files, their links in ComfyUI's model folders, the input images and the pack's reference."""

    def __init__(self, comfyui: Path, cache: Path):
        self.comfyui, self.cache = comfyui, cache
        self.files: dict[str, Path] = {}
        self.links: list[Path] = []
        self.inputs: dict[str, str] = {}
        self.reference: dict = {}

    def place(self) -> None:
        """Build the test files (kept in the cache folder between runs) and link them where the workflow looks."""
        self.files = tiny_sd21.write_all(self.cache)
        self.files["other_lora"] = write_other_lora(self.cache / "flowsr_test_other_lora.safetensors")
        for folder, name, which in PLACES:
            link = self.comfyui / "models" / folder / name
            if link.is_symlink() and link.resolve() == self.files[which].resolve():
                self.links.append(link)  # left by an interrupted run: ours
                continue
            if link.exists() or link.is_symlink():
                raise RuntimeError(f"{link} exists; the native checks need a ComfyUI without it (they place a "
                                   "small test model under that name)")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(self.files[which])
            self.links.append(link)

    def remove(self) -> None:
        for link in self.links:
            link.unlink(missing_ok=True)

    def write_inputs(self) -> None:
        """example.png (shipped with ComfyUI) at each input side, as files of their own."""
        from PIL import Image

        with Image.open(self.comfyui / "input" / "example.png") as image:
            for key, side in INPUTS.items():
                name = f"flowsr_native_{key}.png"
                image.convert("RGB").resize((side, side), Image.LANCZOS).save(self.comfyui / "input" / name)
                self.inputs[key] = name

    def compute_reference(self) -> None:
        """The pack's own results, quantised like Save Image (before ComfyUI starts: memory): the small input
        untiled, the larger one tiled."""
        runs = {"exact": ("small", dict(tile_size=0)), "tiled": ("tiles", dict(tile_size=16, tile_overlap=8))}
        for key, (image, tiling) in runs.items():
            pixels = load_pixels(self.comfyui / "input" / self.inputs[image])
            output = tiny_sd21.pack_upscale(self.files, pixels, EXACT["scale"], color_fix="none", **tiling)
            self.reference[key] = quantise(output[0].movedim(0, -1))


def write_other_lora(path: Path) -> Path:
    """An ordinary SD LoRA (kohya names, as ComfyUI's Load LoRA reads them) on one layer of the test UNet."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(7)
    layer = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{layer}.lora_down.weight": 0.1 * torch.randn(4, 320, generator=generator),
               f"{layer}.lora_up.weight": 0.1 * torch.randn(320, 4, generator=generator),
               f"{layer}.alpha": torch.tensor(4.0)}, str(path))
    return path


def load_pixels(path: Path):
    """An image as Load Image gives it, (1, 3, H, W) in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).movedim(-1, 0)[None]


def quantise(image):
    """(H, W, 3) floats to uint8 exactly as ComfyUI's Save Image does (scaled, clipped, truncated)."""
    import numpy as np

    return np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)


def read_png(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def grey_levels(a, b) -> int:
    return int(abs(a.astype(int) - b.astype(int)).max())


def psnr(a, b) -> float:
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def prompt_for(workflows: Path, image: str, options: dict, prefix: str) -> dict:
    """The shipped workflow's API twin on ``image`` with the upscale's widgets set to ``options``."""
    prompt = json.loads((workflows / "api" / f"{WORKFLOW}.json").read_text())
    for node in prompt.values():
        kind = node["class_type"]
        if kind == "LoadImage":
            node["inputs"]["image"] = image
        elif kind == "FlowSRUpscaleModel":
            node["inputs"].update(options)
        elif kind == "SaveImage":
            node["inputs"]["filename_prefix"] = prefix
    return prompt


def run(server, comfyui: Path, prompt: dict, timeout: float) -> dict:
    """Queue, wait; the saved image, the errors, the seconds, and the server-log lines written meanwhile."""
    log_before = len(server.log.read_text(errors="replace"))
    started = time.monotonic()
    status, answer = server.queue(prompt)
    if status != 200:
        return {"errors": [json.dumps(answer)[:400]], "image": None}
    entry = server.wait_history(answer["prompt_id"], timeout)
    seconds = round(time.monotonic() - started, 1)
    errors = [m[1].get("exception_message") for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
    files = [comfyui / i["type"] / i["subfolder"] / i["filename"]
             for output in entry.get("outputs", {}).values() for i in output.get("images", [])]
    log = server.log.read_text(errors="replace")[log_before:]
    return {"errors": errors, "image": read_png(files[0]) if files else None, "seconds": seconds,
            "loads": [line for line in log.splitlines() if LOAD_LINE in line]}


def check_exactness(server, comfyui: Path, workflows: Path, models: TestModels, report, timeout: float) -> dict:
    """Exact against the pack, tiled against untiled, and no reload for the upscales after the first."""
    exact = run(server, comfyui, prompt_for(workflows, models.inputs["small"], EXACT, "FlowSR/native_exact"), timeout)
    ok = report.check("native: Load Checkpoint -> Apply FlowSR -> FlowSR Upscale ran (exact settings)",
                      exact["image"] is not None, exact["errors"])
    summary: dict = {"exact_s": exact.get("seconds")}
    if ok:
        summary["grey_levels_vs_pack"] = same_as_pack(report, "untiled", exact["image"], models.reference["exact"])
    untiled = run(server, comfyui, prompt_for(workflows, models.inputs["tiles"], EXACT, "FlowSR/native_untiled"),
                  timeout)
    tiled = run(server, comfyui, prompt_for(workflows, models.inputs["tiles"], TILED, "FlowSR/native_tiled"), timeout)
    if report.check("native: untiled and tiled runs of a larger input", untiled["image"] is not None
                    and tiled["image"] is not None, untiled["errors"] + tiled["errors"]):
        summary["tiled_grey_levels_vs_pack"] = same_as_pack(report, "tiled", tiled["image"], models.reference["tiled"])
        summary["tiled_vs_untiled_psnr_db"] = round(psnr(tiled["image"], untiled["image"]), 2)
    reloads = untiled.get("loads", []) + tiled.get("loads", [])
    summary.update(untiled_s=untiled.get("seconds"), tiled_s=tiled.get("seconds"), first_run_loads=exact.get("loads"))
    report.check("native: later upscales reuse the loaded models (no 'Requested to load' in the log)",
                 ok and not reloads and bool(exact.get("loads")), {"first run": exact.get("loads"), "later": reloads})
    return summary


def same_as_pack(report, what: str, image, reference) -> int:
    levels = grey_levels(image, reference) if image.shape == reference.shape else 256
    report.check(f"native, {what}: within 1 grey level of the pack's own path (one step, fp32, no colour fix)",
                 levels <= 1, f"max difference {levels} grey levels, {image.shape}")
    return levels


def check_stacking(server, comfyui: Path, workflows: Path, models: TestModels, report, timeout: float) -> dict:
    """Load LoRA (model only) between Load Checkpoint and Apply FlowSR: its patches and FlowSR's both apply."""
    results = {}
    for strength in (0.0, 1.0):
        prompt = prompt_for(workflows, models.inputs["small"], EXACT, f"FlowSR/native_stacked_{strength:g}")
        apply = next(node for node in prompt.values() if node["class_type"] == "FlowSRApply")
        prompt["90"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": apply["inputs"]["model"], "lora_name": PLACES[2][1], "strength_model": strength}}
        apply["inputs"]["model"] = ["90", 0]
        outcome = run(server, comfyui, prompt, timeout)
        if not report.check(f"native: with another LoRA at strength {strength:g}, ran", outcome["image"] is not None,
                            outcome["errors"]):
            return results
        results[strength] = grey_levels(outcome["image"], models.reference["exact"])
    report.check("native: another LoRA stacks with FlowSR (strength 0: the exact result; 1: another one)",
                 results[0.0] <= 1 < results[1.0], f"grey levels from the exact result: {results}")
    return results


def check_options(start_server, comfyui: Path, workflows: Path, models: TestModels, report, timeout: float) -> dict:
    """The exact run again in servers started with ComfyUI's weight-dtype and memory options."""
    results = {}
    for index, (name, memory_mode, flags) in enumerate(OPTION_SERVERS, start=1):
        server = start_server(flags, index, memory_mode)
        try:
            server.wait_ready()
            outcome = run(server, comfyui, prompt_for(workflows, models.inputs["small"], EXACT, f"FlowSR/native{index}"),
                          timeout)
        finally:
            server.stop()
        if not report.check(f"native, {name}: ran", outcome["image"] is not None, outcome["errors"]):
            continue
        reference = models.reference["exact"]
        results[name] = {"grey_levels_vs_fp32_pack": grey_levels(outcome["image"], reference),
                         "psnr_db_vs_fp32_pack": round(psnr(outcome["image"], reference), 2),
                         "seconds": outcome["seconds"]}
        if memory_mode:
            report.check(f"native, {name}: ComfyUI loaded the models in part ('{PARTIAL_LOAD_LINE}' in its log)",
                         PARTIAL_LOAD_LINE in server.log.read_text(errors="replace"), str(server.log))
            same_as_pack(report, name, outcome["image"], reference)
    return results
