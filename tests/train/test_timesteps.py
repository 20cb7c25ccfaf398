import pytest
import torch

from train.timesteps import sample_pairs, sample_t


def on_grid(t: torch.Tensor, n: int) -> bool:
    return bool(torch.allclose(t * n, (t * n).round(), atol=1e-4))


def test_slow_to_fast_jumps_to_the_fast_point_below():
    t_prime, t = sample_pairs(4000, torch.Generator().manual_seed(0), {"slow_to_fast": 1.0}, 4, 1000)
    assert on_grid(t_prime, 1000) and on_grid(t, 4)
    assert (t < t_prime).all() and (t_prime - t <= 0.25 + 1e-6).all()
    # t' exactly on a fast point jumps a whole fast step: 0.5 -> 0.25
    assert torch.all(t[(t_prime - 0.5).abs() < 1e-6] == 0.25)
    assert set(t.unique().tolist()) == {0.0, 0.25, 0.5, 0.75}


def test_fast_to_slow_steps_one_slow_step_down_from_the_fast_grid():
    t_prime, t = sample_pairs(1000, torch.Generator().manual_seed(1), {"fast_to_slow": 1.0}, 4, 1000)
    assert set(t_prime.unique().tolist()) == {0.25, 0.5, 0.75, 1.0}
    assert torch.allclose(t_prime - t, torch.full_like(t, 1e-3), atol=1e-6)


@pytest.mark.parametrize("rule,step", [("fast", 0.25), ("slow", 1e-3)])
def test_single_scheduler_rules(rule, step):
    t_prime, t = sample_pairs(1000, torch.Generator().manual_seed(2), {rule: 1.0}, 4, 1000)
    assert torch.allclose(t_prime - t, torch.full_like(t, step), atol=1e-6)
    assert (t >= 0).all() and (t_prime <= 1).all()


def test_rule_probabilities_are_respected():
    t_prime, t = sample_pairs(20000, torch.Generator().manual_seed(3), {"fast": 0.25, "slow": 0.75}, 4, 1000)
    fast_share = ((t_prime - t - 0.25).abs() < 1e-6).float().mean().item()
    assert fast_share == pytest.approx(0.25, abs=0.02)


def test_bad_pair_settings_are_refused():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="unknown"):
        sample_pairs(4, g, {"sideways": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        sample_pairs(4, g, {"fast": 0.0})


def test_stage1_samplers():
    g = torch.Generator().manual_seed(0)
    uniform = sample_t(5000, g)
    assert (uniform > 0).all() and (uniform <= 1).all() and uniform.mean().item() == pytest.approx(0.5, abs=0.02)
    grid = sample_t(1000, g, "fast_grid", fast_steps=4)
    assert set(grid.unique().tolist()) == {0.25, 0.5, 0.75, 1.0}
    logit = sample_t(5000, g, "logit_normal", mean=1.0, std=0.5)
    assert logit.median().item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.02)
    assert (sample_t(100, g, t_one_prob=1.0) == 1).all()
    with pytest.raises(ValueError, match="t_sampling"):
        sample_t(4, g, "cosine")
