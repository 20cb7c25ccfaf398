"""The flow math against its definitions and against diffusers' scheduler."""
import pytest
import torch

from flowsr import flow


def test_interpolation_ends_and_constant_velocity():
    x_hr, x_lr = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(flow.interpolate(x_hr, x_lr, 0.0), x_hr)
    assert torch.allclose(flow.interpolate(x_hr, x_lr, 1.0), x_lr)
    t = torch.tensor([0.25, 0.75])
    x_t = flow.interpolate(x_hr, x_lr, t)
    assert torch.allclose(x_t[1], 0.25 * x_hr[1] + 0.75 * x_lr[1])
    v = flow.velocity_target(x_hr, x_lr)
    # With the exact velocity, the consistency function lands on x_hr from any t, and Euler is exact.
    assert torch.allclose(flow.consistency(x_t, v, t), x_hr, atol=1e-6)
    assert torch.allclose(flow.euler_step(x_t, v, t, torch.zeros(2)), x_hr, atol=1e-6)


def test_one_step_sample_is_lr_minus_velocity_at_one():
    x_lr = torch.randn(1, 4, 4, 4)
    seen = []

    def velocity(x, t):
        seen.append(t.clone())
        return 0.5 * x

    out = flow.sample(velocity, x_lr, flow.uniform_schedule(1))
    assert torch.allclose(out, x_lr - 0.5 * x_lr)
    assert seen[0].tolist() == [1.0] and flow.timestep(seen[0]).item() == 1000.0


def test_uniform_schedule_is_the_fast_grid():
    assert flow.uniform_schedule(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError):
        flow.uniform_schedule(0)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_sd3_schedule_matches_diffusers(steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    scheduler.set_timesteps(steps)
    ours = flow.sd3_schedule(steps)
    assert torch.allclose(ours.float(), scheduler.sigmas.float(), atol=1e-5)
    assert torch.allclose(flow.timestep(ours[:-1]).float(), scheduler.timesteps.float(), atol=1e-2)


def test_sd3_four_steps_as_documented():
    assert [round(x, 3) for x in flow.sd3_schedule(4).tolist()] == pytest.approx([1.0, 0.858, 0.602, 0.009, 0.0], abs=2e-3)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        flow.schedule("karras", 4)
