"""Weights files before they are trusted: unreadable files, kinds, and the `check` report (values included)."""
from __future__ import annotations

import json
import os
import re
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import write_flowsr_lora

from flowsr import lora, weights_file
from flowsr.check import check_weights
from flowsr.cli import main
from flowsr.errors import CheckpointError
from flowsr.loading import load_model
from flowsr.models.tiny import TinyFlowSR, save_tiny

SMALL_TINY_CONFIG = {"latent_factor": 2, "unet": {"block_out_channels": [8, 8], "layers_per_block": 1,
                                                  "norm_num_groups": 4, "down_block_types": ["DownBlock2D"] * 2,
                                                  "up_block_types": ["UpBlock2D"] * 2}}
CONV_IN = "denoiser.conv_in.weight"


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("small") / "small.safetensors"
    save_tiny(TinyFlowSR(SMALL_TINY_CONFIG), path)
    return path


def rewrite(source, path, **changes):
    """A copy of the safetensors file ``source`` (metadata kept) with some tensors replaced."""
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata()
    save_file({**load_file(str(source)), **changes}, str(path), metadata=metadata)
    return path


@pytest.fixture
def image_file(tmp_path):
    from PIL import Image

    path = tmp_path / "in.png"
    Image.new("RGB", (12, 10), (120, 80, 40)).save(path)
    return path


# ---------------------------------------------------------------------------------------------- bad files

@pytest.mark.parametrize("content, message", [
    (b"", "too few for a safetensors file"),
    (b"PK\x03\x04" + b"\0" * 100, "pickled PyTorch file"),
    (b"\x80\x02}q\x00" + b"\0" * 100, "pickled PyTorch file"),
    (b"<!DOCTYPE html><html>Not found</html>" + b" " * 100, "web page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git-lfs pointer"),
    (bytes(range(256)) * 4, "not a safetensors file"),
    ((20).to_bytes(8, "little") + b"{not json at all!!!}", "corrupt safetensors header"),
    ((6).to_bytes(8, "little") + b"[1, 2]", "corrupt safetensors header"),
    ((24).to_bytes(8, "little") + b'{"a": {"dtype": "F32"}}\n', "corrupt safetensors header"),
])
def test_unreadable_files_say_what_they_are(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        lora.read_lora(path)
    with pytest.raises(CheckpointError, match=message):
        check_weights(path)


def test_truncated_file(tmp_path, flowsr_lora_file):
    data = flowsr_lora_file.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"truncated: .* describes {len(data)} bytes but the file has "
                                              rf"{len(data) // 2}.*download it again"):
        lora.read_lora(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        lora.read_lora(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a folder"):
        lora.read_lora(tmp_path)


@pytest.mark.parametrize("tensor_name, message", [
    ("model.diffusion_model.input_blocks.0.0.weight", "looks like a base model .* pass it as --base-model"),
    ("down_blocks.0.resnets.0.conv1.weight", "one component of a diffusers base model"),
    ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "Stable Diffusion LoRA"),
    ("something.else", "without FlowSR metadata"),
])
def test_files_of_other_kinds_are_named(tmp_path, tensor_name, message):
    path = tmp_path / "other.safetensors"
    save_file({tensor_name: torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=message):
        lora.read_lora(path)
    report = check_weights(path)
    assert not report.ok and any(re.search(message, p) for p in report.problems)




# ------------------------------------------------------------------------------------- check / describe

def test_check_lists_what_the_file_holds(flowsr_lora_file):
    report = check_weights(flowsr_lora_file)
    assert report.ok
    text = check_weights(flowsr_lora_file).text
    for expected in ["FlowSR checkpoint (public LoRA format)", "138 tensors", "rank 4, lora_alpha 8",
                     "scaling 2", "to_q, to_k", "130 tensors: 128 LoRA, 2 whole weights (conv_in.bias, conv_in.weight)",
                     "VAE LoRA (adapter 'vae_skip'): rank 2", "scaling 4", "cross-attention width 32",
                     "problems:\n  none"]:
        assert expected in text, expected


def test_check_flags_a_checkpoint_for_sdxl(tmp_path):
    path = write_flowsr_lora(tmp_path / "xl.safetensors", vae_targets=None, unet_targets=["to_k"],
                             unet_overrides={"cross_attention_dim": 2048})
    report = check_weights(path)
    assert "expects base model: SDXL (cross-attention width 2048)" in report.text
    assert not report.ok and "will not load" in report.problems[0]


def test_check_shows_regex_targets(tmp_path):
    path = write_flowsr_lora(tmp_path / "r.safetensors", unet_targets=r".*to_q", vae_targets=None)
    assert "target modules: regex '.*to_q'" in check_weights(path).text
    assert "VAE LoRA: none" in check_weights(path).text


def test_check_small_model_file(small_model_file):
    report = check_weights(small_model_file)
    assert report.ok and "FlowSR full model" in report.text and "needs no base model" in report.text




# ------------------------------------------------------------------------------------- damaged values, shapes

def test_check_and_load_agree_that_intact_weights_are_usable(small_model_file, flowsr_lora_file, tiny_sd_folder):
    assert check_weights(small_model_file).ok and check_weights(flowsr_lora_file).ok
    assert load_model(small_model_file, device="cpu", dtype="fp32") is not None
    assert load_model(flowsr_lora_file, tiny_sd_folder, device="cpu", dtype="fp32") is not None


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_small_model_with_non_finite_values_is_refused_by_check_and_upscale(small_model_file, image_file, tmp_path,
                                                                           capsys, value):
    weight = load_file(str(small_model_file))[CONV_IN].clone()
    weight[0, 0, 0, 0] = value
    bad = rewrite(small_model_file, tmp_path / "nan.safetensors", **{CONV_IN: weight})
    report = check_weights(bad)
    assert not report.ok and f"1 tensors hold NaN or infinite values (e.g. {CONV_IN})" in report.problems[0]
    assert main(["check", str(bad)]) == 2
    out = tmp_path / "out.png"
    assert main(["upscale", str(image_file), "-o", str(out), "--checkpoint", str(bad)]) == 2
    error = capsys.readouterr().err
    assert f"NaN or infinite values (e.g. {CONV_IN})" in error and "Traceback" not in error
    assert not out.exists()


def test_lora_with_nan_values_is_refused_by_check_and_load(flowsr_lora_file, tiny_sd_folder, tmp_path):
    key, stored = next(iter(lora.read_lora(flowsr_lora_file).unet.tensor_names.items()))
    tensor = load_file(str(flowsr_lora_file))[stored].clone()
    tensor.view(-1)[-1] = float("nan")
    bad = rewrite(flowsr_lora_file, tmp_path / "nan-lora.safetensors", **{stored: tensor})
    report = check_weights(bad)
    assert not report.ok and f"(e.g. {stored})" in report.problems[0]
    with pytest.raises(CheckpointError, match=rf"NaN or infinite values \(e\.g\. {re.escape(key)}"):
        load_model(bad, tiny_sd_folder, device="cpu", dtype="fp32")


def test_small_model_with_a_tensor_of_another_shape_names_it(small_model_file, image_file, tmp_path, capsys):
    weight = load_file(str(small_model_file))[CONV_IN]
    bad = rewrite(small_model_file, tmp_path / "shape.safetensors", **{CONV_IN: weight[:, :, :2].contiguous()})
    expected = f"other shapes (e.g. {CONV_IN}: file [8, 12, 2, 3], model [8, 12, 3, 3])"
    report = check_weights(bad)
    assert not report.ok and expected in report.problems[0]
    assert main(["check", str(bad)]) == 2
    assert expected in capsys.readouterr().out
    assert main(["upscale", str(image_file), "-o", str(tmp_path / "out.png"), "--checkpoint", str(bad)]) == 2
    error = capsys.readouterr().err
    assert expected in error and "Traceback" not in error and "size mismatch" not in error


def test_small_model_with_a_missing_or_foreign_tensor_names_it(small_model_file, tmp_path):
    state = load_file(str(small_model_file))
    state["denoiser.extra.weight"] = state.pop(CONV_IN)
    bad = tmp_path / "renamed.safetensors"
    save_file(state, str(bad), metadata={"flowsr_model": json.dumps({"architecture": "tiny",
                                                                     "config": SMALL_TINY_CONFIG})})
    problems = " ".join(check_weights(bad).problems)
    assert "no place in the model (e.g. denoiser.extra.weight)" in problems
    assert f"missing (e.g. {CONV_IN})" in problems
    with pytest.raises(CheckpointError, match=re.escape(f"missing (e.g. {CONV_IN})")):
        load_model(bad, device="cpu", dtype="fp32")


def test_an_unreadable_weights_file_is_a_checkpoint_error_not_a_traceback(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"x" * 64)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(CheckpointError, match="cannot read .*Permission denied"):
        weights_file.read_weights_file(path)


# ------------------------------------------------------------------------------------------------ writing

def _save_both_formats(folder):
    save_tiny(TinyFlowSR(SMALL_TINY_CONFIG), folder / "small.safetensors")
    lora.save_lora(folder / "lora.safetensors", {"conv.lora_A.default.weight": torch.ones(2, 4)}, 2, ["conv"])


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_weights_files_get_the_mode_any_new_file_gets(tmp_path):
    """safetensors' own save_file makes files private (0o600): a host running as another user could not read them."""
    previous = os.umask(0o022)
    try:
        _save_both_formats(tmp_path)
    finally:
        os.umask(previous)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["lora.safetensors", "small.safetensors"]
    assert {stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()} == {0o644}
    assert weights_file.read_weights_file(tmp_path / "lora.safetensors").kind == weights_file.FLOWSR_LORA
    assert weights_file.read_weights_file(tmp_path / "small.safetensors").kind == weights_file.FLOWSR_MODEL


def test_an_interrupted_write_leaves_the_previous_file(tmp_path, small_model_file, monkeypatch):
    path = tmp_path / "small.safetensors"
    path.write_bytes(small_model_file.read_bytes())

    def interrupt(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        save_tiny(TinyFlowSR(SMALL_TINY_CONFIG), path)
    assert path.read_bytes() == small_model_file.read_bytes() and list(tmp_path.iterdir()) == [path]
