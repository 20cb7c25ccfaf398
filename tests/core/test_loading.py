"""load_model: which model a checkpoint / base-model pair gives, offline, and what a wrong pair says."""
from __future__ import annotations

import logging
import shutil
import sys
import types

import pytest
import torch
from safetensors.torch import save_file
from tests.conftest import make_unet, make_vae

from flowsr.lora import apply_lora, read_lora
from flowsr.errors import CheckpointError
from flowsr.families import SD21_BASE
from flowsr.loading import BASE_MODEL_FILES, load_model
from flowsr.models import tiny
from flowsr.models.sd import SDFlowSRModel

SMALL_TINY_CONFIG = {"latent_factor": 2, "unet": {"block_out_channels": [8, 8], "layers_per_block": 1,
                                                  "norm_num_groups": 4, "down_block_types": ["DownBlock2D"] * 2,
                                                  "up_block_types": ["UpBlock2D"] * 2}}


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("small") / "small.safetensors"
    tiny.save_tiny(tiny.TinyFlowSR(SMALL_TINY_CONFIG), path)
    return path


def velocity_of(model, seed=0):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.velocity(x.to(model.dtype), torch.ones(1)).float()


def test_no_arguments_load_the_builtin_model(monkeypatch, tiny_file):
    monkeypatch.setattr(tiny, "BUILTIN_WEIGHTS", tiny_file)
    model = load_model(device="cpu", dtype="fp32")
    assert isinstance(model, tiny.TinyFlowSR) and model.config == SMALL_TINY_CONFIG
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_small_model_file_needs_no_base_model(tiny_file, caplog):
    model = load_model(tiny_file, device="cpu", dtype="fp32")
    assert isinstance(model, tiny.TinyFlowSR)
    expected = tiny.load_tiny(tiny_file).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    with caplog.at_level(logging.WARNING, logger="flowsr.loading"):
        assert isinstance(load_model(tiny_file, "some/base", device="cpu", dtype="fp32"), tiny.TinyFlowSR)
    assert "is not used" in caplog.text


def test_lora_on_a_diffusers_folder(tiny_sd_model, flowsr_lora_file, make_sd_components):
    assert isinstance(tiny_sd_model, SDFlowSRModel)
    assert tiny_sd_model.device == torch.device("cpu") and tiny_sd_model.dtype == torch.float32
    unet, vae, text_encoder, tokenizer = make_sd_components()
    apply_lora(read_lora(flowsr_lora_file), unet, vae, merge=False)
    by_hand = SDFlowSRModel.from_components(unet, vae, text_encoder, tokenizer)
    assert torch.allclose(velocity_of(tiny_sd_model), velocity_of(by_hand), atol=1e-5)
    assert torch.equal(tiny_sd_model.prompt_embedding, by_hand.prompt_embedding)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(tiny_sd_model.encode(image), by_hand.encode(image), atol=1e-5)
    base = SDFlowSRModel.from_components(*make_sd_components())
    assert not torch.allclose(velocity_of(tiny_sd_model), velocity_of(base), atol=1e-2)


def test_merge_lora_false_keeps_the_adapters(flowsr_lora_file, tiny_sd_folder, tiny_sd_model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = load_model(flowsr_lora_file, tiny_sd_folder, device="cpu", dtype="fp32", merge_lora=False)
    assert any(isinstance(m, BaseTunerLayer) for m in model.unet.modules())
    assert any(".vae_skip." in k for k in model.vae.state_dict())
    assert not any(isinstance(m, BaseTunerLayer) for m in tiny_sd_model.modules())
    assert torch.allclose(velocity_of(model), velocity_of(tiny_sd_model), atol=1e-5)


@pytest.mark.parametrize("device, dtype, expected", [
    ("cpu", "bf16", torch.bfloat16), (torch.device("cpu"), torch.float16, torch.float16),
    ("auto", "auto", torch.float32),
])
def test_device_and_dtype_names_or_objects(flowsr_lora_file, tiny_sd_folder, device, dtype, expected):
    model = load_model(flowsr_lora_file, str(tiny_sd_folder), device=device, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}
    assert model.prompt_embedding.dtype == expected and model.device == torch.device("cpu")
    assert velocity_of(model).isfinite().all()


def test_lora_without_base_model_says_how_to_get_sd21(flowsr_lora_file):
    with pytest.raises(CheckpointError, match=r"--base-model.*Manojb/stable-diffusion-2-1-base.*"
                                              r"v2-1_512-ema-pruned\.safetensors"):
        load_model(flowsr_lora_file, device="cpu")


def test_base_model_alone_is_not_enough(tiny_sd_folder):
    with pytest.raises(CheckpointError, match="alone is not a super-resolution model.*--checkpoint"):
        load_model(None, tiny_sd_folder, device="cpu")


def test_base_model_given_as_checkpoint(tmp_path):
    path = tmp_path / "v2-1_512-ema-pruned.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3)}, str(path))
    with pytest.raises(CheckpointError, match="looks like a base model .* pass it as --base-model"):
        load_model(path, device="cpu")


def test_checkpoint_given_as_base_model(flowsr_lora_file):
    with pytest.raises(CheckpointError, match="is FlowSR's checkpoint, not a base model: pass it as --checkpoint"):
        load_model(flowsr_lora_file, flowsr_lora_file, device="cpu")


def test_corrupt_checkpoint(tmp_path, tiny_sd_folder):
    path = tmp_path / "flowsr.safetensors"
    path.write_bytes(b"<html><body>rate limited</body></html>" + b" " * 64)
    with pytest.raises(CheckpointError, match="web page"):
        load_model(path, tiny_sd_folder, device="cpu")


def test_missing_base_model(flowsr_lora_file, tmp_path):
    with pytest.raises(CheckpointError, match="not found: it is no folder, no file and no hub id"):
        load_model(flowsr_lora_file, tmp_path / "no" / "such" / "model.safetensors", device="cpu")


def test_folder_that_is_not_a_diffusers_sd_folder(flowsr_lora_file, tiny_sd_folder, tmp_path):
    shutil.copytree(tiny_sd_folder / "unet", tmp_path / "unet")
    with pytest.raises(CheckpointError, match="not a Stable Diffusion diffusers folder: it lacks vae, "
                                              "text_encoder, tokenizer"):
        load_model(flowsr_lora_file, tmp_path, device="cpu")


def test_pickled_weights_are_refused(flowsr_lora_file, tiny_sd_folder, tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(tiny_sd_folder, folder)
    shutil.rmtree(folder / "vae")
    make_vae().save_pretrained(folder / "vae", safe_serialization=False)
    with pytest.raises(CheckpointError, match="cannot load the base model .*safetensors"):
        load_model(flowsr_lora_file, folder, device="cpu")


def test_wrong_base_model_architecture(tmp_path, flowsr_lora_file, tiny_sd_folder):
    folder = tmp_path / "sdxl-like"
    shutil.copytree(tiny_sd_folder, folder)
    shutil.rmtree(folder / "unet")
    make_unet(cross_attention_dim=48).save_pretrained(folder / "unet", safe_serialization=True)
    with pytest.raises(CheckpointError, match="cross-attention width 32 .* base model given has 48"):
        load_model(flowsr_lora_file, folder, device="cpu")


# ------------------------------------------------------------------------------------------------- hub

@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_id_offline_says_how_to_get_it(flowsr_lora_file, empty_hub_cache):
    with pytest.raises(CheckpointError, match=r"Manojb/stable-diffusion-2-1-base is not in the local Hugging Face "
                                              r"cache, and downloads are off: allow them \(allow_download=True"):
        load_model(flowsr_lora_file, "Manojb/stable-diffusion-2-1-base", device="cpu")


def test_hub_id_found_in_the_cache_loads_offline(flowsr_lora_file, tiny_sd_folder, empty_hub_cache, tiny_sd_model):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hub_cache / "models--someone--tiny-sd"
    shutil.copytree(tiny_sd_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = load_model(flowsr_lora_file, "someone/tiny-sd", device="cpu", dtype="fp32")
    assert torch.allclose(velocity_of(model), velocity_of(tiny_sd_model), atol=1e-6)


def test_hub_download_only_when_allowed(flowsr_lora_file, tiny_sd_folder, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **options):
        calls.append((repo_id, options))
        if options["local_files_only"]:
            raise huggingface_hub.utils.LocalEntryNotFoundError("not cached")
        return str(tiny_sd_folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert isinstance(load_model(flowsr_lora_file, "someone/sd", device="cpu", allow_download=True), SDFlowSRModel)
    repo_id, options = calls[-1]
    assert repo_id == "someone/sd" and options["local_files_only"] is False
    assert options["allow_patterns"] == BASE_MODEL_FILES and "unet/diffusion_pytorch_model.safetensors" in BASE_MODEL_FILES
    with pytest.raises(CheckpointError, match="downloads are off"):
        load_model(flowsr_lora_file, "someone/sd", device="cpu")
    assert calls[-1][1]["local_files_only"] is True


def test_hub_download_failure(flowsr_lora_file, monkeypatch):
    import huggingface_hub

    def unreachable(repo_id, **options):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(CheckpointError, match=r"could not download base model someone/sd \(ConnectionError: no "
                                              r"route to host\); check the network"):
        load_model(flowsr_lora_file, "someone/sd", device="cpu", allow_download=True)


# ----------------------------------------------------------------------------------------- single file

def test_single_file_base_model_goes_through_the_ldm_converter(flowsr_lora_file, make_sd_components, tmp_path,
                                                                monkeypatch, tiny_sd_model):
    base = tmp_path / "v2-1_512-ema-pruned.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(1)}, str(base))
    seen = []

    def convert(path, config):
        seen.append((path, config))
        return make_sd_components()

    monkeypatch.setitem(sys.modules, "flowsr.models.single_file",
                        types.SimpleNamespace(load_single_file_components=convert))
    model = load_model(flowsr_lora_file, base, device="cpu", dtype="fp32")
    assert seen == [(base, SD21_BASE.config_dir)]  # the family's shipped configs
    assert torch.allclose(velocity_of(model), velocity_of(tiny_sd_model), atol=1e-6)


def test_pickled_single_file_base_model_is_refused(flowsr_lora_file, tmp_path):
    base = tmp_path / "v2-1_512-ema-pruned.ckpt"
    base.write_bytes(b"PK\x03\x04" + b"\0" * 200)
    with pytest.raises(CheckpointError, match="pickled PyTorch file"):
        load_model(flowsr_lora_file, base, device="cpu")
