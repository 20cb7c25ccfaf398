"""Train FlowSR: stage 1 (SR-flow pre-training) or stage 2 (consistency distillation), one loop for both.

    python -m train.train --config train/configs/tiny_stage1.yaml --set train.max_steps=100
    accelerate launch -m train.train --config train/configs/sd21_stage1.yaml      # GPUs, nodes, DeepSpeed...

Every config key can be overridden with ``--set key=value`` (values are YAML). ``--resume latest`` continues
the newest checkpoint of ``output_dir`` exactly. The result is ``<output_dir>/flowsr.safetensors``, which
``flowsr`` and its CLI load as they are (``python -m flowsr upscale in.png -o out.png --checkpoint ...``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader

from .checkpoints import TrainerState, list_checkpoints, load_checkpoint, register_trainable_only, resolve_resume, \
    save_checkpoint
from .config import ModelConfig, TrainConfig, config_dict, dump_config, load_config
from .data import SeededSampler, build_dataset, load_validation, to_model_inputs
from .models import BuiltModel, build_model, cast_frozen, export_model, trainable_parameters
from .perceptual import load_clip_iqa, load_lpips
from .stages import FlowForward, Stage1, Stage2, Stage2Parts, build_stage2
from .stopping import StopRequest, TrainingStopped
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


def export_metadata(config: TrainConfig, step: int) -> dict[str, str]:
    """What a trained file records about its training (kept in the safetensors header)."""
    return {"flowsr_training": json.dumps({"stage": config.stage, "step": step, "config": config_dict(config)})}


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


@dataclass
class Run:
    """One training run: what :func:`build_run` makes and every later phase reads and advances."""
    config: TrainConfig
    accelerator: Any
    output_dir: Path
    built: BuiltModel
    objective: Union[Stage1, Stage2]
    parts: Optional[Stage2Parts]
    generator: torch.Generator
    params: list
    student: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    discriminator: Any = None          # prepared (maybe wrapped) latent discriminator, stage 2 only
    d_optimizer: Any = None
    state: TrainerState = field(default_factory=TrainerState)
    tracker: Optional[ScalarLog] = None
    val_images: list = field(default_factory=list)
    averages: Averages = field(default_factory=Averages)
    last_log: tuple[float, int] = (0.0, 0)

    @property
    def unwrapped_discriminator(self):
        return self.accelerator.unwrap_model(self.discriminator) if self.discriminator is not None else None


# --- build ---------------------------------------------------------------------------------------------------

def make_accelerator(config: TrainConfig):
    from accelerate import Accelerator

    run = config.train
    # Several processes and no CUDA: accelerate runs them on the CPU (gloo) only when told to use the CPU.
    cpu = run.cpu or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
    return Accelerator(gradient_accumulation_steps=run.gradient_accumulation_steps,
                       mixed_precision=run.mixed_precision, cpu=cpu)


def build_objective(config: TrainConfig, built: BuiltModel, generator: torch.Generator):
    """The stage's loss over a batch, and for stage 2 its teacher, EMA target and discriminator."""
    stage = config.stage
    lpips_wanted = config.stage1.weights.lpips if stage == 1 else config.stage2.distance.lpips
    lpips = load_lpips(config.lpips) if lpips_wanted else None
    if stage == 1:
        return Stage1(config, built.model, lpips, generator), None
    if stage == 2:
        clip_iqa = load_clip_iqa(config.clip, config.stage2.iqa) if config.stage2.weights.iqa else None
        parts = build_stage2(config, built, clip_iqa, load_teacher=partial(load_teacher, config.model))
        return Stage2(config, built.model, parts, lpips, generator), parts
    raise ValueError(f"stage must be 1 or 2, got {stage}")


def load_teacher(model_config: ModelConfig, path: str):
    """A teacher from another file than ``model.init``, built like the student."""
    return build_model(dataclasses.replace(model_config, init=path)).model


def cast_frozen_weights(config: TrainConfig, built: BuiltModel, parts: Optional[Stage2Parts]) -> None:
    half = HALF_DTYPES.get(config.train.mixed_precision)
    if config.train.half_frozen and half is not None:
        cast_frozen(built.model, half)
        if parts is not None:
            parts.teacher.denoiser.to(half)
            parts.ema.cast_untracked(half)


def build_run(config: TrainConfig, base_components=None) -> Run:
    """Accelerator, model, objective, data and optimisers, prepared by accelerate; logging and validation set up."""
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    accelerator = make_accelerator(config)
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, output_dir / "config.yaml")
    accelerator.wait_for_everyone()
    setup_logging(accelerator, output_dir)
    logger.info("stage %d on %s, %d process(es), mixed precision %s", config.stage, accelerator.device,
                accelerator.num_processes, config.train.mixed_precision)
    set_seed(config.seed)   # the same initial weights on every process
    generator = torch.Generator().manual_seed(config.seed + 1_000_003 * (accelerator.process_index + 1))

    built = build_model(config.model, base_components)
    if config.model.gradient_checkpointing:
        enable_gradient_checkpointing(built.model)
    objective, parts = build_objective(config, built, generator)
    cast_frozen_weights(config, built, parts)
    params = trainable_parameters(built.model)
    logger.info("training %.2f M parameters of %.2f M", sum(p.numel() for p in params) / 1e6,
                sum(p.numel() for p in built.model.parameters()) / 1e6)

    data, run = config.data, config.train
    dataset = build_dataset(data, config.seed)
    if len(dataset) < data.batch_size * accelerator.num_processes:
        raise ValueError(f"{len(dataset)} training samples cannot fill one batch of {data.batch_size} per "
                         f"process x {accelerator.num_processes}; raise data.repeat or lower data.batch_size")
    loader = DataLoader(dataset, batch_size=data.batch_size, sampler=SeededSampler(len(dataset), config.seed),
                        drop_last=True, num_workers=data.num_workers, pin_memory=accelerator.device.type == "cuda")
    optimizer = torch.optim.AdamW(params, lr=run.lr, betas=tuple(run.adam_betas), weight_decay=run.weight_decay)
    # Accelerate steps a prepared scheduler once per process per optimiser step, hence the factors.
    scheduler = get_scheduler(run.lr_schedule, optimizer, num_warmup_steps=run.lr_warmup_steps * accelerator.num_processes,
                              num_training_steps=run.max_steps * accelerator.num_processes)
    student = FlowForward(built.model)
    discriminator = d_optimizer = None
    if parts is not None and parts.discriminator is not None:
        adv = config.stage2.adv
        d_optimizer = torch.optim.Adam(parts.discriminator.parameters(), lr=adv.lr, betas=tuple(adv.betas))
        student, optimizer, loader, scheduler, discriminator, d_optimizer = accelerator.prepare(
            student, optimizer, loader, scheduler, parts.discriminator, d_optimizer)
    else:
        student, optimizer, loader, scheduler = accelerator.prepare(student, optimizer, loader, scheduler)
    for module in objective.frozen_modules():
        module.to(accelerator.device)
    tracker = ScalarLog(output_dir, config.log.tensorboard) if accelerator.is_main_process else None
    val = config.validation
    val_images = (load_validation(val.hr, val.lr, data.scale, val.crop, val.max_images)
                  if val.hr and accelerator.is_main_process else [])
    return Run(config, accelerator, output_dir, built, objective, parts, generator, params, student, optimizer,
               scheduler, loader, discriminator, d_optimizer, tracker=tracker, val_images=val_images)


# --- resume --------------------------------------------------------------------------------------------------

def resume(run: Run) -> None:
    """Continue from ``checkpoint.resume`` when set: weights, optimisers, schedules, RNGs, data position, EMA."""
    register_trainable_only(run.accelerator)
    resume_from = resolve_resume(run.output_dir, run.config.checkpoint.resume)
    if resume_from is not None:
        run.state, tensors = load_checkpoint(run.accelerator, resume_from, run.generator,
                                             ("ema",) if run.parts else ())
        if run.parts is not None:
            run.parts.ema.load_state_dict(tensors["ema"])
    if run.state.step == 0 and run.val_images:
        run.tracker.log(0, bicubic_baseline(run.val_images, run.config.data.scale, run.config.validation.ssimulacra2))
    run.last_log = (time.time(), run.state.step)


# --- step ----------------------------------------------------------------------------------------------------

def train_step(run: Run, batch: dict[str, torch.Tensor]) -> bool:
    """One micro-batch: losses, backward, and (when accumulation is complete) the optimiser steps.

    Returns whether an optimiser step happened (``run.state.step`` and the EMA then advanced).
    """
    accelerator, optimizer, d = run.accelerator, run.optimizer, run.unwrapped_discriminator
    run.state.batches_in_epoch += 1
    hr, lr = to_model_inputs(batch)
    trained = [run.student] + ([run.discriminator] if run.discriminator is not None else [])
    with accelerator.accumulate(*trained):
        if d is not None:
            d.requires_grad_(False)   # L_adv trains the student only
        with accelerator.autocast():
            out = run.objective(run.student, hr, lr, run.state.step, d)
        loss = out.losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {run.state.step}; lower train.lr "
                                     "or use bf16 instead of fp16")
        accelerator.backward(loss)
        if accelerator.sync_gradients and run.config.train.grad_clip:
            accelerator.clip_grad_norm_(run.params, run.config.train.grad_clip)
        optimizer.step()
        run.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if out.fake is not None:
            out.losses["disc"] = discriminator_step(run, out.real, out.fake)
    run.averages.add({name: value.detach() for name, value in out.losses.items()})
    if not accelerator.sync_gradients:
        return False
    run.state.step += 1
    if run.parts is not None:
        run.parts.ema.update()
    return True


def discriminator_step(run: Run, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    run.unwrapped_discriminator.requires_grad_(True)
    with run.accelerator.autocast():
        d_loss = run.objective.discriminator_step_loss(run.discriminator, real, fake)
    run.accelerator.backward(d_loss)
    run.d_optimizer.step()
    run.d_optimizer.zero_grad(set_to_none=True)
    return d_loss.detach()


# --- log, validate, checkpoint -------------------------------------------------------------------------------

def every(step: int, period: int) -> bool:
    return bool(period) and step % period == 0


def log_scalars(run: Run, progress) -> None:
    """Mean losses since the last log line (over all processes), the learning rate and the throughput."""
    accelerator, config = run.accelerator, run.config
    means = {k: accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean").item()
             for k, v in sorted(run.averages.pop().items())}
    now = time.time()
    images_per_step = config.data.batch_size * accelerator.num_processes * config.train.gradient_accumulation_steps
    rate = (run.state.step - run.last_log[1]) * images_per_step / max(now - run.last_log[0], 1e-9)
    run.last_log = (now, run.state.step)
    progress.set_postfix(loss=f"{means['loss']:.4g}", img_s=f"{rate:.1f}")
    if run.tracker is not None:
        run.tracker.log(run.state.step, {**{f"train/{k}": v for k, v in means.items()},
                                         "train/lr": run.scheduler.get_last_lr()[0], "train/images_per_s": rate})


def run_validation(run: Run) -> None:
    val = run.config.validation
    if run.accelerator.is_main_process and run.val_images:
        folder = run.output_dir / "validation" / f"step_{run.state.step:08d}" if val.save_images else None
        with run.accelerator.autocast():
            scalars = validate(run.built.model, run.val_images, run.config.data.scale, val.steps, val.schedule,
                               val.color_fix, val.ssimulacra2, folder)
        run.tracker.log(run.state.step, scalars)
        logger.info("validation at step %d: %s", run.state.step,
                    ", ".join(f"{k.removeprefix('val/')}={v:.4g}" for k, v in scalars.items()))
    run.accelerator.wait_for_everyone()


def write_checkpoint(run: Run) -> Path:
    tensors = {"ema": run.parts.ema.state_dict()} if run.parts is not None else {}
    folder = save_checkpoint(run.accelerator, run.output_dir, run.state, run.generator, tensors,
                             keep=run.config.checkpoint.keep, write_files=partial(export_into, run))
    logger.info("checkpoint %s", folder)
    return folder


def export_into(run: Run, folder: Path) -> None:
    export_model(run.built, folder / "flowsr.safetensors", run.config.export.dtype,
                 export_metadata(run.config, run.state.step))


def after_step(run: Run, progress) -> None:
    """The periodic work after an optimiser step: log line, validation, checkpoint."""
    step, config = run.state.step, run.config
    progress.update(1)
    if every(step, config.log.every) or step == config.train.max_steps:
        log_scalars(run, progress)
    if config.validation.hr and every(step, config.validation.every):
        run_validation(run)
    if every(step, config.checkpoint.every):
        write_checkpoint(run)


def finish(run: Run) -> Path:
    """The last checkpoint and validation (unless the last step just wrote them) and the export."""
    config, step = run.config, run.state.step
    if not every(step, config.checkpoint.every):
        write_checkpoint(run)
    if config.validation.hr and not every(step, config.validation.every):
        run_validation(run)
    export_path = run.output_dir / "flowsr.safetensors"
    if run.accelerator.is_main_process:
        export_model(run.built, export_path, config.export.dtype, export_metadata(config, step))
        logger.info("exported %s", export_path)
        run.tracker.close()
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return export_path


def train(config: TrainConfig, base_components=None) -> Path:
    """Run the training a config describes; returns the path of the exported ``flowsr.safetensors``.

    ``base_components`` stands in for ``model.base_model`` (tests pass tiny SD components).
    """
    from tqdm.auto import tqdm

    run = build_run(config, base_components)
    resume(run)
    max_steps = config.train.max_steps
    progress = tqdm(total=max_steps, initial=run.state.step, disable=not run.accelerator.is_main_process,
                    desc=f"stage {config.stage}", dynamic_ncols=True)
    with StopRequest() as stop:
        while run.state.step < max_steps:
            state = run.state
            run.loader.set_epoch(state.epoch)
            batches = (run.accelerator.skip_first_batches(run.loader, state.batches_in_epoch)
                       if state.batches_in_epoch else run.loader)
            for batch in batches:
                if train_step(run, batch):
                    after_step(run, progress)
                    stop_signal = stop.agreed(run.accelerator)
                    if stop_signal is not None:
                        progress.close()
                        raise TrainingStopped(stop_signal, run.state.step, checkpoint_after_stop(run))
                    if run.state.step >= max_steps:
                        break
            else:
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    progress.close()
    return finish(run)


def checkpoint_after_stop(run: Run) -> Path:
    """The checkpoint of the step just finished: written now, unless the periodic one just was."""
    if every(run.state.step, run.config.checkpoint.every):
        return list_checkpoints(run.output_dir)[-1]
    return write_checkpoint(run)


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
        print(yaml.safe_dump(config_dict(config), sort_keys=False))
        return 0
    try:
        train(config)
    except TrainingStopped as stopped:
        print(f"train: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print("train: stopped at once; the checkpoints written so far are whole: continue with the same command "
              "and --resume latest", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
