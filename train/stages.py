"""The two training objectives over one batch: stage 1 (SR-flow) and stage 2 (consistency distillation).

docs/METHOD.md is the reference; the flow math comes from :mod:`flowsr.flow`. Each objective returns
named loss terms; the loop in :mod:`train.train` does the backward passes and optimiser steps.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import nn

from flowsr.flow import consistency, euler_step, interpolate, velocity_target
from flowsr.models.base import FlowSRModel

from .config import TrainConfig
from .losses import ImageDistance, LatentDiscriminator, discriminator_loss, generator_loss
from .models import BuiltModel, adapters_disabled, frozen_copy, with_denoiser
from .timesteps import sample_pairs, sample_t

logger = logging.getLogger(__name__)


class FlowOutput(NamedTuple):
    x_t: torch.Tensor
    x_lr: Optional[torch.Tensor]
    velocity: torch.Tensor


class FlowForward(nn.Module):
    """The trained model behind a single ``forward``, the call DDP/FSDP hook to synchronise gradients.

    Given ``x_t`` it predicts the velocity there. Given ``x_hr`` and the LR pixels instead, it first encodes
    the LR image (through a VAE-encoder LoRA, when one trains) and builds ``x_t`` on the path between them.
    """

    def __init__(self, model: FlowSRModel):
        super().__init__()
        self.model = model

    def forward(self, t: torch.Tensor, x_t: Optional[torch.Tensor] = None, x_hr: Optional[torch.Tensor] = None,
                lr: Optional[torch.Tensor] = None) -> FlowOutput:
        x_lr = None
        if x_t is None:
            x_lr = self.model.encode(lr)
            x_t = interpolate(x_hr, x_lr, t)
        return FlowOutput(x_t, x_lr, self.model.velocity(x_t, t))


@torch.no_grad()
def encode_hr(model: FlowSRModel, hr: torch.Tensor) -> torch.Tensor:
    """The HR end of the flow: the base encoder's latent (any encoder LoRA is for the LR input only)."""
    with adapters_disabled(model.autoencoder):
        return model.encode(hr)


@dataclass
class StepOutput:
    losses: dict[str, torch.Tensor]          # "loss" is the total to minimise; the rest are for the log
    real: Optional[torch.Tensor] = None      # stage 2: latents for the discriminator step
    fake: Optional[torch.Tensor] = None


class Stage1:
    """SR-flow pre-training: ``d(dec f(x_t, t), X_HR)`` with ``f(x_t, t) = x_t - t v`` (+ optional latent MSE)."""

    def __init__(self, config: TrainConfig, model: FlowSRModel, lpips: Optional[nn.Module], generator: torch.Generator):
        self.model, self.generator = model, generator
        self.sampling = config.stage1
        weights = self.sampling.weights
        self.image_loss = ImageDistance(weights.l2, weights.lpips, lpips) if (
            weights.l2 or (weights.lpips and lpips is not None)) else None
        self.latent_weight = weights.latent_mse
        if self.image_loss is None and not self.latent_weight:
            raise ValueError("stage1.weights switch every loss off; keep l2 (or lpips, or latent_mse) above 0")

    def frozen_modules(self) -> list[nn.Module]:
        return [self.image_loss] if self.image_loss is not None else []

    def __call__(self, student: nn.Module, hr: torch.Tensor, lr: torch.Tensor, step: int,
                 discriminator: Optional[nn.Module] = None) -> StepOutput:
        s = self.sampling
        t = sample_t(len(hr), self.generator, s.t_sampling, s.logit_normal.mean, s.logit_normal.std,
                     s.fast_steps, s.t_one_prob).to(hr.device)
        x_hr = encode_hr(self.model, hr)
        out = student(t, x_hr=x_hr, lr=lr)
        losses: dict[str, torch.Tensor] = {}
        if self.image_loss is not None:
            estimate = self.model.decode(consistency(out.x_t, out.velocity, t))
            losses["flow"] = self.image_loss(estimate, hr).mean()
        if self.latent_weight:
            target = velocity_target(x_hr, out.x_lr)
            losses["latent_mse"] = self.latent_weight * (out.velocity.float() - target.float()).pow(2).mean()
        losses["loss"] = sum(losses.values())
        return StepOutput(losses)


class EMA:
    """theta_minus: an exponential moving average of the student's trainable weights, in its own network."""

    def __init__(self, student_denoiser: nn.Module, decay: float):
        self.network = frozen_copy(student_denoiser)
        self.decay = decay
        self.names = [name for name, p in student_denoiser.named_parameters() if p.requires_grad]
        own = dict(self.network.named_parameters())
        self._pairs = [(own[name], p) for name, p in student_denoiser.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self) -> None:
        for ema, live in self._pairs:
            ema.lerp_(live.detach().to(ema.dtype), 1.0 - self.decay)

    def cast_untracked(self, dtype: torch.dtype) -> None:
        """Store the weights the EMA never changes (a LoRA model's base) in ``dtype``; the averages stay fp32."""
        tracked = set(self.names)
        for name, parameter in self.network.named_parameters():
            if name not in tracked and parameter.is_floating_point():
                parameter.data = parameter.data.to(dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: ema for name, (ema, _) in zip(self.names, self._pairs)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, (ema, _) in zip(self.names, self._pairs):
            ema.copy_(state[name])


@dataclass
class Stage2Parts:
    """What stage 2 adds around the student; built by :func:`build_stage2`."""
    teacher: FlowSRModel
    ema: EMA
    target: FlowSRModel
    discriminator: Optional[LatentDiscriminator] = None
    clip_iqa: Optional[nn.Module] = None


class Stage2:
    """Consistency SR-flow distillation (docs/METHOD.md).

    For pairs ``t < t'``: ``x_t'`` on the path, the teacher's Euler step ``xhat_t``, then
    ``L_cd = d(dec f_theta(x_t', t'), dec f_theta-(xhat_t, t))``, ``L_hr = d(dec f_theta(xhat_t, t), X_HR)``,
    ``L_flow = d(dec f_theta(x_t', t'), X_HR)``, ``L_adv`` on the student's latent estimates, and ``L_iqa``.
    A weight of 0 switches a term off (and skips its computation).
    """

    def __init__(self, config: TrainConfig, model: FlowSRModel, parts: Stage2Parts, lpips: Optional[nn.Module],
                 generator: torch.Generator):
        self.model, self.parts, self.generator = model, parts, generator
        self.config = config.stage2
        self.weights = dataclasses.asdict(self.config.weights)
        if parts.discriminator is None:
            self.weights["adv"] = 0.0
        if parts.clip_iqa is None:
            self.weights["iqa"] = 0.0
        if not any(self.weights.values()):
            raise ValueError("stage2.weights switch every loss off; keep at least one of cd, hr, flow above 0")
        self.distance = ImageDistance(self.config.distance.l2, self.config.distance.lpips, lpips)
        logger.info("stage 2 losses: %s", ", ".join(f"{k}={v:g}" + ("" if v else " (off)") for k, v in self.weights.items()))

    def frozen_modules(self) -> list[nn.Module]:
        modules = [self.distance, self.parts.teacher.denoiser, self.parts.ema.network]
        return modules + ([self.parts.clip_iqa] if self.parts.clip_iqa is not None else [])

    def adversarial_active(self, step: int) -> bool:
        return self.weights["adv"] > 0 and step >= self.config.adv.start_step

    def __call__(self, student: nn.Module, hr: torch.Tensor, lr: torch.Tensor, step: int,
                 discriminator: Optional[nn.Module] = None) -> StepOutput:
        w, batch = self.weights, len(hr)
        t_prime, t = (x.to(hr.device) for x in sample_pairs(batch, self.generator, dataclasses.asdict(self.config.pairs),
                                                            self.config.n_fast, self.config.n_slow))
        with torch.no_grad():
            x_hr = encode_hr(self.model, hr)
            x_lr = self.model.encode(lr)
            x_tp = interpolate(x_hr, x_lr, t_prime)
            v_teacher = self.parts.teacher.velocity(x_tp, t_prime)
            xhat_t = euler_step(x_tp, v_teacher.to(x_tp.dtype), t_prime, t)
        # One student forward for both points (DDP sees a single call per step).
        use_hat = w["hr"] > 0 or self.adversarial_active(step)
        points, times = (torch.cat([x_tp, xhat_t]), torch.cat([t_prime, t])) if use_hat else (x_tp, t_prime)
        velocity = student(times, x_t=points).velocity
        f_tp = consistency(x_tp, velocity[:batch], t_prime)
        f_t = consistency(xhat_t, velocity[batch:], t) if use_hat else None
        losses: dict[str, torch.Tensor] = {}
        pred_tp = self.model.decode(f_tp) if (w["cd"] or w["flow"] or w["iqa"]) else None
        if w["cd"]:
            with torch.no_grad():
                v_target = self.parts.target.velocity(xhat_t, t)
                target = self.model.decode(consistency(xhat_t, v_target.to(xhat_t.dtype), t))
            losses["cd"] = w["cd"] * self.distance(pred_tp, target).mean()
        if w["hr"]:
            losses["hr"] = w["hr"] * self.distance(self.model.decode(f_t), hr).mean()
        if w["flow"]:
            losses["flow"] = w["flow"] * self.distance(pred_tp, hr).mean()
        if w["iqa"]:
            losses["iqa"] = w["iqa"] * self.parts.clip_iqa(pred_tp).mean()
        fake = None
        if self.adversarial_active(step):
            fake = torch.cat([f_tp, f_t])
            losses["adv"] = w["adv"] * generator_loss(discriminator(fake), self.config.adv.loss)
        losses["loss"] = sum(losses.values())
        return StepOutput(losses, real=x_hr if fake is not None else None,
                          fake=fake.detach() if fake is not None else None)

    def discriminator_step_loss(self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        logits = discriminator(torch.cat([real, fake]))
        return discriminator_loss(logits[:len(real)], logits[len(real):], self.config.adv.loss)


def build_stage2(config: TrainConfig, built: BuiltModel, clip_iqa: Optional[nn.Module], load_teacher) -> Stage2Parts:
    """Teacher, EMA target and discriminator around the student ``built.model`` (initialised from stage 1).

    ``load_teacher(path)`` builds a model from another file when ``stage2.teacher`` differs from
    ``model.init``; by default the teacher is a frozen copy of the initial student.
    """
    model, stage2 = built.model, config.stage2
    teacher_path = stage2.teacher or config.model.init
    if not teacher_path:
        raise ValueError("stage 2 distils a stage-1 model: set model.init (and optionally stage2.teacher) to "
                         "the stage-1 flowsr.safetensors")
    if config.model.init and str(teacher_path) == str(config.model.init):
        teacher_denoiser = frozen_copy(model.denoiser, merge=built.lora is not None)
    else:
        teacher_denoiser = frozen_copy(load_teacher(teacher_path).denoiser, merge=built.lora is not None)
    # The encoder is the stage-1 one, frozen: stage 2 distils the velocity network.
    for parameter in model.autoencoder.parameters():
        parameter.requires_grad_(False)
    ema = EMA(model.denoiser, stage2.ema_decay)
    discriminator = None
    if stage2.weights.adv:
        adv = stage2.adv
        discriminator = LatentDiscriminator(model.latent_channels, adv.channels, adv.layers, adv.spectral_norm)
    return Stage2Parts(teacher=with_denoiser(model, teacher_denoiser), ema=ema, target=with_denoiser(model, ema.network),
                       discriminator=discriminator, clip_iqa=clip_iqa)
