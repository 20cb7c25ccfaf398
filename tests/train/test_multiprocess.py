"""Two CPU processes under ``accelerate launch`` (DDP over gloo): stage 2 with the discriminator, then a resume."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from train.config import load_config
from train.tracking import read_scalars
from train.train import train

ROOT = Path(__file__).resolve().parents[2]


def launch(overrides: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "train.train", *(arg for o in overrides for arg in ("--set", o))]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.multiprocess
def test_two_process_stage2_and_resume(small_run, tmp_path):
    stage1 = train(load_config(None, small_run(tmp_path / "stage1", **{"train.max_steps": 1})))
    overrides = small_run(tmp_path / "stage2", **{"stage": 2, "model.init": str(stage1), "checkpoint.every": 2,
                                                  "train.max_steps": 2, "data.repeat": 4})
    first = launch(overrides)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "2 process(es)" in first.stderr
    checkpoint = tmp_path / "stage2" / "checkpoints" / "step_00000002"
    assert {json.loads((checkpoint / f"trainer_state_{rank}.json").read_text())["step"] for rank in (0, 1)} == {2}

    resumed = launch(overrides + ["train.max_steps=3", "checkpoint.resume=latest"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr
    steps = {step for step, name, _ in read_scalars(tmp_path / "stage2" / "scalars.csv", "train/disc")}
    assert steps == {1, 2, 3}
    assert (tmp_path / "stage2" / "flowsr.safetensors").is_file()
