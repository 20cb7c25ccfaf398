"""The public flowsr.safetensors format: parsing, exact application (alpha 8 / r), bad metadata, save."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import (TINY_UNET_CONFIG, UNET_RANK, UNET_TARGETS, VAE_RANK, VAE_TARGETS, make_unet, make_vae,
                      write_flowsr_lora)
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import save_file

from flowsr import lora
from flowsr.check import check_weights
from flowsr.loading import load_model
from flowsr.weights_file import FLOWSR_LORA_KEY, read_weights_file
from flowsr.errors import CheckpointError

ATTN_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
VAE_CONV = "encoder.down_blocks.0.resnets.0.conv1"


def stored_state(path, group):
    """The file's tensors of one group keyed by their state-dict key, read independently of flowsr."""
    with safe_open(str(path), framework="pt") as f:
        names = json.loads(f.metadata()[FLOWSR_LORA_KEY])["tensor_names"][group]
        return {key: f.get_tensor(name) for name, key in names.items()}


def unet_inputs(batch=1):
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 4, 8, 8, generator=generator), torch.randn(batch, 77, 32, generator=generator))


def apply_file(path, merge):
    unet, vae = make_unet(), make_vae()
    lora.apply_lora(lora.read_lora(path), unet, vae, merge=merge)
    return unet, vae


@torch.no_grad()
def run_unet(unet, x, context):
    return unet(x, torch.tensor([1000.0]), encoder_hidden_states=context).sample


def test_parse_reads_ranks_targets_and_maps_vae_keys(flowsr_lora_file):
    parsed = lora.read_lora(flowsr_lora_file)
    assert parsed.unet.rank == UNET_RANK and parsed.unet.target_modules == UNET_TARGETS
    assert parsed.vae.rank == VAE_RANK and parsed.vae.target_modules == VAE_TARGETS
    assert parsed.unet.scaling == 8 / UNET_RANK and parsed.vae.scaling == 8 / VAE_RANK
    assert "conv_in.weight" in parsed.unet.tensor_names
    assert f"{VAE_CONV}.lora_A.vae_skip.weight" in parsed.vae.tensor_names
    assert not any(".default." in key for key in parsed.vae.tensor_names)
    assert set(stored_state(flowsr_lora_file, "unet_state_dict")) == set(parsed.unet.tensor_names)


def test_unet_lora_scaling_is_peft_default_alpha_over_rank(flowsr_lora_file):
    unet, _ = apply_file(flowsr_lora_file, merge=False)
    stored = stored_state(flowsr_lora_file, "unet_state_dict")
    base = make_unet().get_submodule(ATTN_Q).weight
    a, b = stored[f"{ATTN_Q}.lora_A.default.weight"], stored[f"{ATTN_Q}.lora_B.default.weight"]
    expected_weight = base + (8 / UNET_RANK) * b @ a
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.allclose(unet.get_submodule(ATTN_Q)(x), x @ expected_weight.T, atol=1e-6)


def test_vae_lora_scaling_and_adapter_name(flowsr_lora_file):
    _, vae = apply_file(flowsr_lora_file, merge=False)
    stored = stored_state(flowsr_lora_file, "vae_state_dict")
    layer = vae.get_submodule(VAE_CONV)
    assert layer.active_adapters == ["vae_skip"]
    base = make_vae().get_submodule(VAE_CONV)
    a, b = stored[f"{VAE_CONV}.lora_A.default.weight"], stored[f"{VAE_CONV}.lora_B.default.weight"]
    delta = (8 / VAE_RANK) * (b.flatten(1) @ a.flatten(1)).reshape(base.weight.shape)
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        expected = F.conv2d(x, base.weight + delta, base.bias, padding=1)
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_whole_weights_such_as_conv_in_are_loaded(flowsr_lora_file):
    unet, _ = apply_file(flowsr_lora_file, merge=True)
    stored = stored_state(flowsr_lora_file, "unet_state_dict")
    assert torch.equal(unet.conv_in.weight, stored["conv_in.weight"])
    assert torch.equal(unet.conv_in.bias, stored["conv_in.bias"])


def test_merged_equals_unmerged_to_fp32_rounding_and_leaves_no_peft_layers(flowsr_lora_file):
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged_unet, merged_vae = apply_file(flowsr_lora_file, merge=True)
    unet, vae = apply_file(flowsr_lora_file, merge=False)
    assert not any(isinstance(m, BaseTunerLayer) for m in [*merged_unet.modules(), *merged_vae.modules()])
    x, context = unet_inputs(2)
    reference = run_unet(unet, x, context)
    assert (run_unet(merged_unet, x, context) - reference).abs().max() <= 1e-5 * reference.abs().max()
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(merged_vae.encode(image).latent_dist.mean, vae.encode(image).latent_dist.mean,
                              atol=1e-5)
    assert not torch.allclose(run_unet(make_unet(), x, context), reference, atol=1e-2), "the LoRA must matter"


def test_same_result_as_the_reference_procedure(flowsr_lora_file):
    """diffusers' add_adapter, a state-dict update and a strict load, as the public re-implementation does."""
    unet, vae = make_unet(), make_vae()
    unet.add_adapter(LoraConfig(r=UNET_RANK, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    vae_config = LoraConfig(r=VAE_RANK, init_lora_weights="gaussian", target_modules=VAE_TARGETS)
    if hasattr(vae, "add_adapter"):
        vae.add_adapter(vae_config, adapter_name="vae_skip")
    else:  # diffusers 0.31: what its add_adapter would do
        from peft import inject_adapter_in_model
        inject_adapter_in_model(vae_config, vae, adapter_name="vae_skip")
    unet.load_state_dict({**unet.state_dict(), **stored_state(flowsr_lora_file, "unet_state_dict")})
    vae.load_state_dict({**vae.state_dict(), **{k.replace(".default", ".vae_skip"): v for k, v in
                                                stored_state(flowsr_lora_file, "vae_state_dict").items()}})
    ours_unet, ours_vae = apply_file(flowsr_lora_file, merge=True)
    x, context = unet_inputs()
    reference = run_unet(unet, x, context)
    assert (run_unet(ours_unet, x, context) - reference).abs().max() <= 1e-5 * reference.abs().max()
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours_vae.encode(image).latent_dist.mean, vae.encode(image).latent_dist.mean, atol=1e-5)


def test_regex_target_modules(tmp_path):
    regex = r".*attn[12]\.to_(q|v)"
    path = write_flowsr_lora(tmp_path / "regex.safetensors", unet_targets=regex, vae_targets=None,
                             whole_weights=False)
    unet, vae = make_unet(), make_vae()
    parsed = lora.read_lora(path)
    assert parsed.unet.target_modules == regex and parsed.vae is None
    lora.apply_lora(parsed, unet, vae, merge=False)
    adapted = {name.rsplit(".lora_A", 1)[0] for name in unet.state_dict() if ".lora_A." in name}
    assert adapted and all(name.endswith(("attn1.to_q", "attn2.to_q", "attn1.to_v", "attn2.to_v")) for name in adapted)
    assert len(adapted) == 16  # 4 transformer blocks (down 1, mid 1, up 2) x 2 attentions x (to_q, to_v)


@pytest.mark.parametrize("width, family", [(48, "unknown"), (2048, "SDXL"), (768, "SD 1.x")])
def test_checkpoint_for_another_base_model_names_the_mismatch(tmp_path, width, family):
    path = write_flowsr_lora(tmp_path / "other.safetensors", vae_targets=None,
                             unet_overrides={"cross_attention_dim": width})
    with pytest.raises(CheckpointError, match=rf"cross-attention width {width} \({family}.*has 32"):
        apply_file(path, merge=True)


def test_shape_mismatch_outside_cross_attention_names_the_tensor(tmp_path):
    path = write_flowsr_lora(tmp_path / "wide.safetensors", vae_targets=None, whole_weights=False,
                             unet_targets=["to_q"], unet_overrides={"block_out_channels": (48, 64)})
    with pytest.raises(CheckpointError, match=r"other shapes \(e\.g\. .*to_q\.lora_A\.default\.weight: "
                                              r"file \[4, 48\], model \[4, 32\]\)"):
        apply_file(path, merge=True)


def test_stored_key_without_a_place_is_an_error(tmp_path, flowsr_lora_file):
    tensors = {"x": torch.zeros(3), "y": torch.zeros(UNET_RANK, 32)}
    names = {"unet_state_dict": {"x": "conv_in.bias_typo", "y": f"{ATTN_Q}.lora_A.default.weight"}}
    path = write_raw(tmp_path / "typo.safetensors", tensors, {"unet_rank": UNET_RANK,
                                                             "unet_lora_target_modules": ["to_q"]}, names)
    with pytest.raises(CheckpointError, match=r"1 tensors have no place in the model \(e\.g\. conv_in\.bias_typo\)"):
        apply_file(path, merge=False)


def test_targets_missing_from_the_model(tmp_path):
    path = write_raw(tmp_path / "t.safetensors", {"a": torch.zeros(4, 8)},
                     {"unet_rank": 4, "unet_lora_target_modules": ["no_such_layer"]},
                     {"unet_state_dict": {"a": "no_such_layer.lora_A.default.weight"}})
    with pytest.raises(CheckpointError, match="LoRA targets do not exist"):
        apply_file(path, merge=False)


def write_raw(path, tensors, fields, names, metadata_key=FLOWSR_LORA_KEY):
    save_file(tensors, str(path), metadata={metadata_key: json.dumps({"fields": fields, "tensor_names": names})})
    return path


# ---------------------------------------------------------------------------------------------- bad metadata

@pytest.mark.parametrize("fields, names, message", [
    ({"unet_rank": 0, "unet_lora_target_modules": ["to_q"]}, {"unet_state_dict": {"a": "k"}}, "not a positive"),
    ({"unet_rank": 4, "unet_lora_target_modules": []}, {"unet_state_dict": {"a": "k"}}, "not a list of module"),
    ({"unet_rank": 4, "unet_lora_target_modules": ["to_q"]}, {"unet_state_dict": {"zz": "k"}},
     "names 1 unet tensors the file does not hold"),
    ({"unet_rank": 4}, {}, "holds no UNet weights"),
    ({"unet_rank": 4, "unet_lora_target_modules": ["to_q"]}, {"unet_state_dict": ["a"]}, "'unet_state_dict' is not"),
    ({"unet_rank": 2, "unet_lora_target_modules": ["to_q"]},
     {"unet_state_dict": {"a": f"{ATTN_Q}.lora_A.default.weight"}}, "has rank 4 but the metadata says unet_rank=2"),
])
def test_inconsistent_metadata(tmp_path, fields, names, message):
    path = write_raw(tmp_path / "m.safetensors", {"a": torch.zeros(4, 32)}, fields, names)
    with pytest.raises(CheckpointError, match=message):
        lora.read_lora(path)
    with pytest.raises(CheckpointError, match=f"m.safetensors is not a usable FlowSR checkpoint: .*{message}"):
        load_model(path, device="cpu")
    assert any(message.split(" ")[0] in p for p in check_weights(path).problems)


@pytest.mark.parametrize("payload", ["{broken", '{"fields": [], "tensor_names": {}}', '{"tensor_names": "x"}'])
def test_corrupt_metadata_json(tmp_path, payload):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={FLOWSR_LORA_KEY: payload})
    with pytest.raises(CheckpointError, match="corrupt FlowSR metadata"):
        lora.read_lora(path)


# ------------------------------------------------------------------------------------------------ saving

def test_save_round_trip(tmp_path):
    unet, vae = make_unet(), make_vae()
    lora.add_lora(unet, 8, ["to_q", "to_v", "conv1"], lora.UNET_ADAPTER)
    lora.add_lora(vae, 4, ["encoder.conv_in"], lora.VAE_ADAPTER)
    with torch.no_grad():
        for name, p in [*unet.named_parameters(), *vae.named_parameters()]:
            if "lora_" in name or name.startswith("conv_in."):
                p.normal_()
    path = tmp_path / "saved.safetensors"
    lora.save_lora(path, lora.lora_state_dict(unet, lora.UNET_ADAPTER, whole_weights=["conv_in."]),
                              8, ["to_q", "to_v", "conv1"], lora.lora_state_dict(vae, lora.VAE_ADAPTER),
                              4, ["encoder.conv_in"], metadata={"trained_by": "test"})
    assert check_weights(path).ok
    vae_keys = stored_state(path, "vae_state_dict")
    assert vae_keys and all(".default." in key for key in vae_keys)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["trained_by"] == "test"
    loaded_unet, loaded_vae = apply_file(path, merge=False)
    for original, loaded in [(unet, loaded_unet), (vae, loaded_vae)]:
        expected = original.state_dict()
        assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    assert "conv_in.weight" in stored_state(path, "unet_state_dict")


def test_save_in_half_precision_and_requires_vae_fields(tmp_path):
    unet = lora.add_lora(make_unet(), 4, ["to_q"], lora.UNET_ADAPTER)
    state = lora.lora_state_dict(unet, lora.UNET_ADAPTER)
    path = tmp_path / "half.safetensors"
    lora.save_lora(path, state, 4, {"to_q"}, dtype=torch.float16)
    assert {entry["dtype"] for entry in read_weights_file(path).tensors.values()} == {"F16"}
    assert lora.read_lora(path).unet.target_modules == ["to_q"]
    with pytest.raises(ValueError, match="vae_rank"):
        lora.save_lora(path, state, 4, ["to_q"], vae_state=state)


def test_tiny_unet_config_is_sd_like():
    """Guard the fixture: the LoRA tests rely on SD 2.1's linear-projection transformer layout."""
    unet = make_unet()
    assert TINY_UNET_CONFIG["use_linear_projection"] and isinstance(unet.down_blocks[0].attentions[0].proj_in,
                                                                    torch.nn.Linear)
