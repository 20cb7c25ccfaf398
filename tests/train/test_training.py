"""End-to-end runs of the trainer on a very small model: stage 1 learns, stage 2 runs in every ablation,
resume is exact, checkpoints are atomic."""
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from train.checkpoints import list_checkpoints
from train.config import load_config
from train.tracking import read_scalars
from train.train import train


def run(overrides: list[str]):
    return train(load_config(None, overrides))


@pytest.fixture(scope="module")
def stage1_export(small_run, tmp_path_factory):
    """A briefly trained stage-1 model: the teacher and initial student of the stage-2 tests."""
    return run(small_run(tmp_path_factory.mktemp("stage1"), **{"train.max_steps": 2}))


def test_stage1_loss_falls(small_run, tmp_path):
    # t = 1 only (the one-step point) keeps the logged loss comparable between steps.
    output = run(small_run(tmp_path, **{"train.max_steps": 30, "train.lr": 2e-3, "data.batch_size": 4,
                                        "data.repeat": 8, "data.degradation": "bicubic",
                                        "stage1.t_sampling": "fast_grid", "stage1.fast_steps": 1}))
    losses = [value for _, _, value in read_scalars(output.parent / "scalars.csv", "train/loss")]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, losses


TERMS = ("cd", "hr", "flow", "adv")


@pytest.mark.parametrize("off", [None, *TERMS])
def test_stage2_runs_with_every_component_and_with_each_off(small_run, stage1_export, tmp_path, off):
    weights = {f"stage2.weights.{term}": (0 if term == off else 0.5) for term in TERMS}
    output = run(small_run(tmp_path, **{"stage": 2, "model.init": stage1_export, "train.max_steps": 2,
                                        "stage2.weights.iqa": 0, **weights}))
    logged = {name for _, name, _ in read_scalars(output.parent / "scalars.csv")}
    for term in TERMS:
        assert (f"train/{term}" in logged) == (term != off)
    assert ("train/disc" in logged) == (off != "adv")
    assert output.is_file()


def test_stage2_single_scheduler_ablation_runs(small_run, stage1_export, tmp_path):
    output = run(small_run(tmp_path, **{"stage": 2, "model.init": stage1_export, "train.max_steps": 1,
                                        "stage2.pairs": "{slow: 1.0}", "stage2.weights.adv": 0}))
    assert output.is_file()


def test_stage2_needs_a_stage1_model(small_run, tmp_path):
    with pytest.raises(ValueError, match="model.init"):
        run(small_run(tmp_path, **{"stage": 2}))


def _weights(folder):
    return {name: load_file(str(path)) for name in ("model", "model_1", "ema")
            if (path := folder / f"{name}.safetensors").exists()}


@pytest.mark.parametrize("stage", [1, 2])
def test_resume_continues_bit_identically(small_run, stage1_export, tmp_path, stage):
    """N steps straight == N/2 steps, a checkpoint, a fresh process state, N/2 more steps."""
    extra = {"stage": stage, "train.max_steps": 6, "checkpoint.every": 3, "checkpoint.keep": 0,
             "train.lr_schedule": "cosine", "train.lr_warmup_steps": 2, "data.degradation": "mix"}
    if stage == 1:
        extra["train.gradient_accumulation_steps"] = 2   # the checkpoint falls at an epoch end
    else:
        extra["model.init"] = stage1_export              # EMA, discriminator and its optimiser too
    straight = run(small_run(tmp_path / "straight", **extra)).parent
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step_00000003", resumed_dir / "checkpoints" / "step_00000003")
    run(small_run(resumed_dir, **extra, **{"checkpoint.resume": "latest"}))
    a = _weights(straight / "checkpoints" / "step_00000006")
    b = _weights(resumed_dir / "checkpoints" / "step_00000006")
    assert set(a) == set(b) == ({"model"} if stage == 1 else {"model", "model_1", "ema"})
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    # and the run really moved between the two checkpoints
    middle = _weights(straight / "checkpoints" / "step_00000003")["model"]
    assert any(not torch.equal(middle[key], a["model"][key]) for key in middle)


def test_checkpoints_are_atomic_and_pruned(small_run, tmp_path):
    output_dir = tmp_path / "run"
    # A crash mid-write leaves a .tmp folder: it is never resumed from, and the next save replaces it.
    stale = output_dir / "checkpoints" / "step_00000004.tmp"
    stale.mkdir(parents=True)
    (stale / "half-written").write_text("")
    run(small_run(output_dir, **{"train.max_steps": 4, "checkpoint.every": 1, "checkpoint.keep": 2}))
    assert [p.name for p in list_checkpoints(output_dir)] == ["step_00000003", "step_00000004"]
    assert not stale.exists()
    assert {p.name for p in (output_dir / "checkpoints" / "step_00000004").iterdir()} >= {
        "model.safetensors", "optimizer.bin", "trainer_state_0.json", "flowsr.safetensors"}


def test_validation_logs_metrics_and_images(small_run, validation_photos, tmp_path):
    output = run(small_run(tmp_path, **{"train.max_steps": 2, "validation.hr": str(validation_photos),
                                        "validation.every": 2, "validation.crop": 32,
                                        "validation.steps": "[1, 2]", "validation.ssimulacra2": "false"}))
    logged = {name for _, name, _ in read_scalars(output.parent / "scalars.csv")}
    assert {"val/bicubic/PSNR-Y", "val/1step/PSNR-Y", "val/2step/SSIM-Y"} <= logged
    images = sorted(p.name for p in (output.parent / "validation" / "step_00000002").iterdir())
    assert images == ["val0_1step.png", "val0_2step.png"]


def test_a_signal_ignored_at_the_start_stays_ignored(terminal_signals):
    """nohup and a shell's background job start the trainer with SIGINT ignored: the terminal's Ctrl-C is not
    for it. It stays ignored; SIGTERM is still noted."""
    from train.stopping import StopRequest

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.number is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.number == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("number, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_writes_a_checkpoint_and_the_resumed_run_is_the_straight_one(
        small_run, tmp_path, monkeypatch, capsys, terminal_signals, number, code):
    """A real signal mid-run: the step under way finishes, a checkpoint of it is written, one line says how to
    continue, exit 128 + the signal; --resume latest then ends where a run without the signal ends, bit for bit."""
    from train import train as trainer

    extra = {"train.max_steps": 4, "checkpoint.every": 0, "train.lr_schedule": "cosine"}
    real_after_step = trainer.after_step

    def signal_after_step_2(run_state, progress):
        real_after_step(run_state, progress)
        if run_state.state.step == 2:
            os.kill(os.getpid(), number)

    monkeypatch.setattr(trainer, "after_step", signal_after_step_2)
    argv = [item for override in small_run(tmp_path / "stopped", **extra) for item in ("--set", override)]
    assert trainer.main(argv) == code
    error = capsys.readouterr().err
    assert "--resume latest" in error and "Traceback" not in error
    assert [p.name for p in list_checkpoints(tmp_path / "stopped")] == ["step_00000002"]
    assert not list((tmp_path / "stopped" / "checkpoints").glob("*.tmp"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the trainer put them back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    monkeypatch.setattr(trainer, "after_step", real_after_step)
    assert trainer.main(argv + ["--resume", "latest"]) == 0
    straight = run(small_run(tmp_path / "straight", **extra)).parent
    a = _weights(straight / "checkpoints" / "step_00000004")["model"]
    b = _weights(tmp_path / "stopped" / "checkpoints" / "step_00000004")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
