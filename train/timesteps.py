"""Flow times for training: one ``t`` per sample in stage 1, pairs ``t < t'`` in stage 2.

Stage 2's fast-slow scheduling (docs/METHOD.md): a fast grid of ``n_fast`` steps (``k / n_fast``) and a
slow one of ``n_slow`` steps. How a pair combines them is configurable, with a probability per rule:

- ``slow_to_fast`` ("flexible jumps"): ``t'`` on the slow grid, ``t`` the next fast-grid point below it;
- ``fast_to_slow`` ("mild perturbations"): ``t'`` on the fast grid, ``t`` one slow step below it;
- ``fast`` / ``slow``: both ends on one grid, one step apart (single-scheduler ablations).

Grids are built in integers, so ``t`` is exactly a grid point (``0`` included: ``f(x, 0) = x``).
"""
from __future__ import annotations

import torch

PAIR_RULES = ("slow_to_fast", "fast_to_slow", "fast", "slow")
T_SAMPLERS = ("uniform", "logit_normal", "fast_grid")


def sample_t(batch: int, generator: torch.Generator, sampling: str = "uniform", mean: float = 0.0,
             std: float = 1.0, fast_steps: int = 4, t_one_prob: float = 0.0) -> torch.Tensor:
    """Stage-1 flow times in (0, 1]; ``t_one_prob`` of them exactly 1, where one-step inference starts."""
    if sampling == "uniform":
        t = 1.0 - torch.rand(batch, generator=generator, dtype=torch.float64)   # (0, 1]
    elif sampling == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(batch, generator=generator, dtype=torch.float64))
    elif sampling == "fast_grid":
        t = torch.randint(1, fast_steps + 1, (batch,), generator=generator).double() / fast_steps
    else:
        raise ValueError(f"unknown stage1.t_sampling {sampling!r}; use one of {T_SAMPLERS}")
    at_one = torch.rand(batch, generator=generator, dtype=torch.float64) < t_one_prob
    return torch.where(at_one, torch.ones_like(t), t).float()


def sample_pairs(batch: int, generator: torch.Generator, probs: dict[str, float], n_fast: int = 4,
                 n_slow: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t_prime, t)`` with ``0 <= t < t_prime <= 1``, each sample's rule drawn with ``probs``."""
    unknown = set(probs) - set(PAIR_RULES)
    if unknown:
        raise ValueError(f"unknown stage2.pairs rule(s) {sorted(unknown)}; use {PAIR_RULES}")
    weights = torch.tensor([float(probs.get(rule, 0.0)) for rule in PAIR_RULES], dtype=torch.float64)
    if weights.sum() <= 0 or (weights < 0).any():
        raise ValueError(f"stage2.pairs needs non-negative probabilities with a positive sum, got {probs}")
    if n_slow < n_fast or n_fast < 1:
        raise ValueError(f"need 1 <= n_fast <= n_slow, got n_fast={n_fast}, n_slow={n_slow}")
    rule = torch.multinomial(weights, batch, replacement=True, generator=generator)
    slow_k = torch.randint(1, n_slow + 1, (batch,), generator=generator)
    fast_k = torch.randint(1, n_fast + 1, (batch,), generator=generator)
    t_prime = torch.where((rule == 0) | (rule == 3), slow_k.double() / n_slow, fast_k.double() / n_fast)
    below = torch.stack([
        ((slow_k * n_fast - 1) // n_slow).double() / n_fast,      # slow_to_fast: the fast point below t'
        fast_k.double() / n_fast - 1.0 / n_slow,                   # fast_to_slow
        (fast_k - 1).double() / n_fast,                            # fast
        (slow_k - 1).double() / n_slow,                            # slow
    ])
    t = below.gather(0, rule[None]).squeeze(0)
    return t_prime.float(), t.float()
