"""Train FlowSR: stage 1 (SR-flow pre-training) or stage 2 (consistency distillation), one loop for both.

    python -m train.train --config train/configs/tiny_stage1.yaml --set train.max_steps=100
    accelerate launch -m train.train --config train/configs/sd21_stage1.yaml      # GPUs, nodes, DeepSpeed...

Every config key can be overridden with ``--set key=value`` (values are YAML). ``--resume latest`` continues
the newest checkpoint of ``output_dir`` exactly. The result is ``<output_dir>/flowsr.safetensors``, which
``flowsr`` and its CLI load as they are (``python -m flowsr upscale in.png -o out.png --checkpoint ...``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader

from .checkpoints import TrainerState, load_checkpoint, register_trainable_only, resolve_resume, save_checkpoint
from .config import dump_config, load_config
from .data import SeededSampler, build_dataset, load_validation, to_model_inputs
from .models import BuiltModel, build_model, cast_frozen, export_model, trainable_parameters
from .perceptual import load_clip_iqa, load_lpips
from .stages import FlowForward, Stage1, Stage2, build_stage2
from .tracking import ScalarLog
from .validation import bicubic_baseline, validate

logger = logging.getLogger("train")

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def setup_logging(accelerator, output_dir: Path) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if accelerator.is_main_process:
        handlers.append(logging.FileHandler(output_dir / "train.log", encoding="utf-8"))
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)


def enable_gradient_checkpointing(model) -> None:
    for module in (model.denoiser, model.autoencoder):
        if hasattr(module, "enable_gradient_checkpointing"):
            module.enable_gradient_checkpointing()


def export_metadata(config: dict, step: int) -> dict[str, str]:
    """What a trained file records about its training (kept in the safetensors header)."""
    return {"flowsr_training": json.dumps({"stage": config["stage"], "step": step, "config": config})}


class Averages:
    """Running means of logged values between two log lines."""

    def __init__(self):
        self.sums, self.counts = defaultdict(float), defaultdict(int)

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self.sums[name] += float(value)
            self.counts[name] += 1

    def pop(self) -> dict[str, float]:
        means = {name: self.sums[name] / self.counts[name] for name in self.sums}
        self.sums.clear()
        self.counts.clear()
        return means


def train(config: dict, base_components=None) -> Path:
    """Run the training a config describes; returns the path of the exported ``flowsr.safetensors``.

    ``base_components`` stands in for ``model.base_model`` (tests pass tiny SD components).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    run = config["train"]
    # Several processes and no CUDA: accelerate runs them on the CPU (gloo) only when told to use the CPU.
    cpu = run["cpu"] or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
    accelerator = Accelerator(gradient_accumulation_steps=run["gradient_accumulation_steps"],
                              mixed_precision=run["mixed_precision"], cpu=cpu)
    output_dir = Path(config["output_dir"])
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, output_dir / "config.yaml")
    accelerator.wait_for_everyone()
    setup_logging(accelerator, output_dir)
    logger.info("stage %d on %s, %d process(es), mixed precision %s", config["stage"], accelerator.device,
                accelerator.num_processes, run["mixed_precision"])
    set_seed(config["seed"])   # the same initial weights on every process
    generator = torch.Generator().manual_seed(config["seed"] + 1_000_003 * (accelerator.process_index + 1))

    # --- model, frozen helpers, objective --------------------------------------------------------------
    built: BuiltModel = build_model(config["model"], base_components)
    model = built.model
    if config["model"]["gradient_checkpointing"]:
        enable_gradient_checkpointing(model)
    stage = int(config["stage"])
    lpips_wanted = (config["stage1"]["weights"]["lpips"] if stage == 1 else config["stage2"]["distance"]["lpips"])
    lpips = load_lpips(config["lpips"]) if lpips_wanted else None
    discriminator = parts = None
    if stage == 1:
        objective = Stage1(config, model, lpips, generator)
    elif stage == 2:
        clip_iqa = load_clip_iqa(config["clip"], config["stage2"]["iqa"]) if config["stage2"]["weights"]["iqa"] else None
        parts = build_stage2(config, built, clip_iqa,
                             load_teacher=lambda path: build_model({**config["model"], "init": path}).model)
        discriminator = parts.discriminator
        objective = Stage2(config, model, parts, lpips, generator)
    else:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    half = HALF_DTYPES.get(run["mixed_precision"])
    if run["half_frozen"] and half is not None:
        cast_frozen(model, half)
        if parts is not None:
            parts.teacher.denoiser.to(half)
            parts.ema.cast_untracked(half)
    params = trainable_parameters(model)
    logger.info("training %.2f M parameters of %.2f M", sum(p.numel() for p in params) / 1e6,
                sum(p.numel() for p in model.parameters()) / 1e6)

    # --- data, optimisers ----------------------------------------------------------------------------------
    data = config["data"]
    dataset = build_dataset(data, config["seed"])
    if len(dataset) < data["batch_size"] * accelerator.num_processes:
        raise ValueError(f"{len(dataset)} training samples cannot fill one batch of {data['batch_size']} per "
                         f"process x {accelerator.num_processes}; raise data.repeat or lower data.batch_size")
    sampler = SeededSampler(len(dataset), config["seed"])
    loader = DataLoader(dataset, batch_size=data["batch_size"], sampler=sampler, drop_last=True,
                        num_workers=data["num_workers"], pin_memory=accelerator.device.type == "cuda")
    optimizer = torch.optim.AdamW(params, lr=float(run["lr"]), betas=tuple(run["adam_betas"]),
                                  weight_decay=float(run["weight_decay"]))
    # Accelerate steps a prepared scheduler once per process per optimiser step, hence the factors.
    scheduler = get_scheduler(run["lr_schedule"], optimizer,
                              num_warmup_steps=run["lr_warmup_steps"] * accelerator.num_processes,
                              num_training_steps=run["max_steps"] * accelerator.num_processes)
    student = FlowForward(model)
    if discriminator is not None:
        adv = config["stage2"]["adv"]
        d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=float(adv["lr"]), betas=tuple(adv["betas"]))
        student, optimizer, loader, scheduler, discriminator, d_optimizer = accelerator.prepare(
            student, optimizer, loader, scheduler, discriminator, d_optimizer)
    else:
        student, optimizer, loader, scheduler = accelerator.prepare(student, optimizer, loader, scheduler)
        d_optimizer = None
    for module in objective.frozen_modules():
        module.to(accelerator.device)

    # --- resume --------------------------------------------------------------------------------------------
    register_trainable_only(accelerator)
    state = TrainerState()
    resume_from = resolve_resume(output_dir, config["checkpoint"]["resume"])
    if resume_from is not None:
        state, tensors = load_checkpoint(accelerator, resume_from, generator, ("ema",) if parts else ())
        if parts is not None:
            parts.ema.load_state_dict(tensors["ema"])

    def checkpoint() -> None:
        tensors = {"ema": parts.ema.state_dict()} if parts is not None else {}
        folder = save_checkpoint(
            accelerator, output_dir, state, generator, tensors, keep=config["checkpoint"]["keep"],
            write_files=lambda folder: export_model(built, folder / "flowsr.safetensors", config["export"]["dtype"],
                                                    export_metadata(config, state.step)))
        logger.info("checkpoint %s", folder)

    # --- validation ----------------------------------------------------------------------------------------
    val = config["validation"]
    val_images = []
    tracker = ScalarLog(output_dir, config["log"]["tensorboard"]) if accelerator.is_main_process else None
    if val["hr"] and accelerator.is_main_process:
        val_images = load_validation(val["hr"], val["lr"], data["scale"], val["crop"], val["max_images"])
        if state.step == 0 and val_images:
            tracker.log(0, bicubic_baseline(val_images, data["scale"], val["ssimulacra2"]))

    def run_validation() -> None:
        if accelerator.is_main_process and val_images:
            with accelerator.autocast():
                scalars = validate(model, val_images, data["scale"], val["steps"], val["schedule"], val["color_fix"],
                                   val["ssimulacra2"],
                                   output_dir / "validation" / f"step_{state.step:08d}" if val["save_images"] else None)
            tracker.log(state.step, scalars)
            logger.info("validation at step %d: %s", state.step,
                        ", ".join(f"{k.removeprefix('val/')}={v:.4g}" for k, v in scalars.items()))
        accelerator.wait_for_everyone()

    # --- the loop ------------------------------------------------------------------------------------------
    trained = [student] + ([discriminator] if discriminator is not None else [])
    unwrapped_discriminator = accelerator.unwrap_model(discriminator) if discriminator is not None else None
    images_per_step = data["batch_size"] * accelerator.num_processes * run["gradient_accumulation_steps"]
    averages, last_log = Averages(), (time.time(), state.step)
    progress = tqdm(total=run["max_steps"], initial=state.step, disable=not accelerator.is_main_process,
                    desc=f"stage {stage}", dynamic_ncols=True)
    while state.step < run["max_steps"]:
        loader.set_epoch(state.epoch)
        batches = accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
        for batch in batches:
            state.batches_in_epoch += 1
            hr, lr = to_model_inputs(batch)
            with accelerator.accumulate(*trained):
                if unwrapped_discriminator is not None:
                    unwrapped_discriminator.requires_grad_(False)   # L_adv trains the student only
                with accelerator.autocast():
                    out = objective(student, hr, lr, state.step, unwrapped_discriminator)
                loss = out.losses["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the loss became {loss.item()} at step {state.step}; lower train.lr "
                                             "or use bf16 instead of fp16")
                accelerator.backward(loss)
                if accelerator.sync_gradients and run["grad_clip"]:
                    accelerator.clip_grad_norm_(params, run["grad_clip"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if out.fake is not None:
                    unwrapped_discriminator.requires_grad_(True)
                    with accelerator.autocast():
                        d_loss = objective.discriminator_step_loss(discriminator, out.real, out.fake)
                    accelerator.backward(d_loss)
                    d_optimizer.step()
                    d_optimizer.zero_grad(set_to_none=True)
                    out.losses["disc"] = d_loss.detach()
            averages.add({name: value.detach() for name, value in out.losses.items()})
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            if parts is not None:
                parts.ema.update()
            progress.update(1)
            if (config["log"]["every"] and state.step % config["log"]["every"] == 0) or state.step == run["max_steps"]:
                means = {k: accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean").item()
                         for k, v in sorted(averages.pop().items())}
                now = time.time()
                rate = (state.step - last_log[1]) * images_per_step / max(now - last_log[0], 1e-9)
                last_log = (now, state.step)
                progress.set_postfix(loss=f"{means['loss']:.4g}", img_s=f"{rate:.1f}")
                if tracker is not None:
                    tracker.log(state.step, {**{f"train/{k}": v for k, v in means.items()},
                                             "train/lr": scheduler.get_last_lr()[0], "train/images_per_s": rate})
            if val["hr"] and val["every"] and state.step % val["every"] == 0:
                run_validation()
            if config["checkpoint"]["every"] and state.step % config["checkpoint"]["every"] == 0:
                checkpoint()
            if state.step >= run["max_steps"]:
                break
        else:
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    progress.close()

    # --- the end -------------------------------------------------------------------------------------------
    if not (config["checkpoint"]["every"] and state.step % config["checkpoint"]["every"] == 0):
        checkpoint()
    if val["hr"] and not (val["every"] and state.step % val["every"] == 0):
        run_validation()
    export_path = output_dir / "flowsr.safetensors"
    if accelerator.is_main_process:
        export_model(built, export_path, config["export"]["dtype"], export_metadata(config, state.step))
        logger.info("exported %s", export_path)
        tracker.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return export_path


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a YAML config (train/configs/*.yaml); defaults fill what it omits")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.max_steps=100 (repeatable)")
    parser.add_argument("--resume", metavar="latest|FOLDER", help="shortcut for --set checkpoint.resume=...")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    overrides = list(args.set) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
    config = load_config(args.config, overrides)
    if args.print_config:
        import yaml
        print(yaml.safe_dump(config, sort_keys=False))
        return 0
    train(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
