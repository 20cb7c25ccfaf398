"""Model soups: the weighted mean of two small models is exact, loads in flowsr, and refuses what cannot mix."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from flowsr.models.tiny import TinyFlowSR, load_tiny, save_tiny
from train.average_weights import AVERAGE_KEY, average_models

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {"latent_factor": 2, "unet": {"block_out_channels": [8, 8], "layers_per_block": 1, "norm_num_groups": 4,
                                      "down_block_types": ["DownBlock2D"] * 2, "up_block_types": ["UpBlock2D"] * 2}}


def random_model(seed: int, config=CONFIG) -> TinyFlowSR:
    torch.manual_seed(seed)
    return TinyFlowSR(config)


def test_the_average_is_the_weighted_mean_of_every_tensor():
    a, b = random_model(0), random_model(1)
    soup = average_models([a, b], [3.0, 1.0])  # normalised to 0.75 / 0.25
    for name, value in soup.state_dict().items():
        expected = 0.75 * a.state_dict()[name] + 0.25 * b.state_dict()[name]
        assert torch.allclose(value, expected, atol=1e-7), name
    assert not torch.equal(soup.denoiser.conv_in.weight, a.denoiser.conv_in.weight)


def test_models_of_other_architectures_or_bad_weights_are_refused():
    other = {**CONFIG, "unet": {**CONFIG["unet"], "block_out_channels": [8, 16]}}
    with pytest.raises(ValueError, match="different architectures"):
        average_models([random_model(0), random_model(1, other)], [0.5, 0.5])
    with pytest.raises(ValueError, match="weight"):
        average_models([random_model(0), random_model(1)], [1.0, -1.0])


def test_cli_writes_a_loadable_fp16_file_that_records_its_inputs(tmp_path):
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for seed, path in enumerate(paths):
        save_tiny(random_model(seed), path, metadata={"flowsr_training": f"run {seed}"})
    out = tmp_path / "soup.safetensors"
    assert run_cli(*paths, "--weights", "0.5", "0.5", "--out", out).returncode == 0
    soup = load_tiny(out)
    expected = (load_tiny(paths[0]).denoiser.conv_in.weight + load_tiny(paths[1]).denoiser.conv_in.weight) / 2
    assert torch.allclose(soup.denoiser.conv_in.weight, expected, atol=1e-3)  # fp16 in the file
    with safe_open(str(out), framework="pt") as f:
        record = json.loads(f.metadata()[AVERAGE_KEY])
        assert f.get_tensor("denoiser.conv_in.weight").dtype == torch.float16
    assert [(i["file"], i["weight"], i["metadata"]) for i in record["inputs"]] == [
        ("a.safetensors", 0.5, {"flowsr_training": "run 0"}), ("b.safetensors", 0.5, {"flowsr_training": "run 1"})]


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.average_weights", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


def test_cli_answers_a_weight_mismatch_or_a_broken_file_with_exit_2(tmp_path):
    good, broken, out = tmp_path / "a.safetensors", tmp_path / "broken.safetensors", tmp_path / "o.safetensors"
    save_tiny(random_model(0), good)
    broken.write_bytes(b"not a safetensors file")
    mismatch, unreadable = run_cli(good, good, "--weights", "1", "--out", out), run_cli(good, broken, "--out", out)
    for done, says in ((mismatch, "2 inputs but 1 weights"), (unreadable, "broken.safetensors")):
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not out.exists()
