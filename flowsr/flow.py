"""The rectified flow between a low- and a high-resolution latent, as tiny functions over tensors.

Convention (docs/METHOD.md): ``t = 0`` is the high-resolution latent, ``t = 1`` the low-resolution one,
``x_t = (1 - t) x_hr + t x_lr`` and the network predicts the constant velocity ``v = x_lr - x_hr``.
Inference integrates from ``t = 1`` down to ``t = 0``; training uses the same functions to build its targets,
so the math exists once.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

#: The UNet sees ``timestep = TIMESTEP_SCALE * t`` (1000 for the single step of the public weights).
TIMESTEP_SCALE = 1000.0

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity(x_t, t)`` with ``t`` a 1-D tensor of flow times in [0, 1], one per batch item."""


def _broadcast(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.ndim - 1))) if t.ndim else t


def interpolate(x_hr: torch.Tensor, x_lr: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """The point at time ``t`` on the straight path from ``x_hr`` (t=0) to ``x_lr`` (t=1)."""
    t = _broadcast(t, x_hr)
    return (1 - t) * x_hr + t * x_lr


def velocity_target(x_hr: torch.Tensor, x_lr: torch.Tensor) -> torch.Tensor:
    """The velocity of the straight path, the same at every ``t``."""
    return x_lr - x_hr


def euler_step(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float, t_next: torch.Tensor | float) -> torch.Tensor:
    """One Euler step of ``dx/dt = v`` from ``t`` to ``t_next`` (``t_next < t`` when moving towards HR)."""
    return x_t + (_broadcast(t_next, x_t) - _broadcast(t, x_t)) * v


def consistency(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """The consistency function ``f(x_t, t) = x_t - t v``: the HR end the velocity points to."""
    return x_t - _broadcast(t, x_t) * v


def uniform_schedule(steps: int) -> torch.Tensor:
    """The paper's fast grid ``t_k = 1 - k / N``, k = 0..N (so ``[1, 0]`` for one step)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift of flow times: ``shift t / (1 + (shift - 1) t)``."""
    return shift * t / (1 + (shift - 1) * t)


def sd3_schedule(steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The grid of diffusers' ``FlowMatchEulerDiscreteScheduler`` with the SD3-medium config, then 0.

    The scheduler spaces times linearly between its shifted largest and smallest training sigma, then
    shifts them once more; the public re-implementation uses this grid for ``N > 1`` steps.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    train_sigmas = torch.linspace(1.0, 1.0 / num_train_timesteps, num_train_timesteps, dtype=torch.float64)
    train_sigmas = shift_time(train_sigmas, shift)
    sigmas = torch.linspace(float(train_sigmas[0]), float(train_sigmas[-1]), steps, dtype=torch.float64)
    return torch.cat([shift_time(sigmas, shift), sigmas.new_zeros(1)])


SCHEDULES: dict[str, Callable[[int], torch.Tensor]] = {"uniform": uniform_schedule, "sd3": sd3_schedule}


def schedule(name: str, steps: int) -> torch.Tensor:
    """Flow times from 1 down to 0 (``steps + 1`` values) for a schedule named in :data:`SCHEDULES`."""
    try:
        return SCHEDULES[name](steps)
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}") from None


def sample(velocity: Velocity, x_lr: torch.Tensor, times: torch.Tensor,
           callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Integrate from ``times[0]`` to ``times[-1]`` with Euler steps; one step is ``x_lr - v(x_lr, 1)``.

    The plain loop over a whole latent: the pipeline runs the same :func:`euler_step` tile by tile, and the tests
    hold it to this. ``callback(step, x)`` runs after each step.
    """
    x = x_lr
    for i in range(len(times) - 1):
        t, t_next = float(times[i]), float(times[i + 1])
        v = velocity(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32))
        x = euler_step(x, v.to(x.dtype), t, t_next)
        if callback is not None:
            callback(i, x)
    return x


def timestep(t: torch.Tensor) -> torch.Tensor:
    """The UNet timestep for flow time ``t``."""
    return t * TIMESTEP_SCALE


__all__ = [
    "TIMESTEP_SCALE", "Velocity", "interpolate", "velocity_target", "euler_step", "consistency",
    "uniform_schedule", "sd3_schedule", "shift_time", "SCHEDULES", "schedule", "sample", "timestep",
]
