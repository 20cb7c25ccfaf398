"""The public flowsr.safetensors format: parsing, exact application (alpha 8 / r), bad files, check, save."""
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

from flowsr import checkpoint as ckpt
from flowsr.errors import CheckpointError

ATTN_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
VAE_CONV = "encoder.down_blocks.0.resnets.0.conv1"


def stored_state(path, group):
    """The file's tensors of one group keyed by their state-dict key, read independently of flowsr."""
    with safe_open(str(path), framework="pt") as f:
        names = json.loads(f.metadata()[ckpt.METADATA_KEY])["tensor_names"][group]
        return {key: f.get_tensor(name) for name, key in names.items()}


def unet_inputs(batch=1):
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 4, 8, 8, generator=generator), torch.randn(batch, 77, 32, generator=generator))


def apply_file(path, merge):
    unet, vae = make_unet(), make_vae()
    ckpt.apply_checkpoint(ckpt.read_checkpoint(path), unet, vae, merge=merge)
    return unet, vae


@torch.no_grad()
def run_unet(unet, x, context):
    return unet(x, torch.tensor([1000.0]), encoder_hidden_states=context).sample


def test_parse_reads_ranks_targets_and_maps_vae_keys(flowsr_lora_file):
    checkpoint = ckpt.read_checkpoint(flowsr_lora_file)
    assert checkpoint.unet.rank == UNET_RANK and checkpoint.unet.target_modules == UNET_TARGETS
    assert checkpoint.vae.rank == VAE_RANK and checkpoint.vae.target_modules == VAE_TARGETS
    assert checkpoint.unet.scaling == 8 / UNET_RANK and checkpoint.vae.scaling == 8 / VAE_RANK
    assert "conv_in.weight" in checkpoint.unet.tensor_names
    assert f"{VAE_CONV}.lora_A.vae_skip.weight" in checkpoint.vae.tensor_names
    assert not any(".default." in key for key in checkpoint.vae.tensor_names)
    assert set(stored_state(flowsr_lora_file, "unet_state_dict")) == set(checkpoint.unet.tensor_names)


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
    checkpoint = ckpt.read_checkpoint(path)
    assert checkpoint.unet.target_modules == regex and checkpoint.vae is None
    ckpt.apply_checkpoint(checkpoint, unet, vae, merge=False)
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


def write_raw(path, tensors, fields, names, metadata_key=ckpt.METADATA_KEY):
    save_file(tensors, str(path), metadata={metadata_key: json.dumps({"fields": fields, "tensor_names": names})})
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
        ckpt.read_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        ckpt.describe(path)


def test_truncated_file(tmp_path, flowsr_lora_file):
    data = flowsr_lora_file.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"truncated: .* describes {len(data)} bytes but the file has "
                                              rf"{len(data) // 2}.*download it again"):
        ckpt.read_checkpoint(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.read_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a folder"):
        ckpt.read_checkpoint(tmp_path)


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
        ckpt.read_checkpoint(path)
    report = ckpt.check(path)
    assert not report.ok and any(__import__("re").search(message, p) for p in report.problems)


@pytest.mark.parametrize("fields, names, message", [
    ({"unet_rank": 0, "unet_lora_target_modules": ["to_q"]}, {"unet_state_dict": {"a": "k"}}, "not a positive"),
    ({"unet_rank": 4, "unet_lora_target_modules": []}, {"unet_state_dict": {"a": "k"}}, "not a list of module"),
    ({"unet_rank": 4, "unet_lora_target_modules": ["to_q"]}, {"unet_state_dict": {"zz": "k"}},
     "names 1 unet tensors the file does not hold"),
    ({"unet_rank": 4}, {}, "holds no UNet weights"),
    ({"unet_rank": 2, "unet_lora_target_modules": ["to_q"]},
     {"unet_state_dict": {"a": f"{ATTN_Q}.lora_A.default.weight"}}, "has rank 4 but the metadata says unet_rank=2"),
])
def test_inconsistent_metadata(tmp_path, fields, names, message):
    path = write_raw(tmp_path / "m.safetensors", {"a": torch.zeros(4, 32)}, fields, names)
    with pytest.raises(CheckpointError, match=message):
        ckpt.read_checkpoint(path)
    assert any(message.split(" ")[0] in p for p in ckpt.check(path).problems)


def test_corrupt_metadata_json(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={ckpt.METADATA_KEY: "{broken"})
    with pytest.raises(CheckpointError, match="corrupt FlowSR metadata"):
        ckpt.read_checkpoint(path)


# ------------------------------------------------------------------------------------- check / describe

def test_describe_lists_what_the_file_holds(flowsr_lora_file):
    report = ckpt.check(flowsr_lora_file)
    assert report.ok
    text = ckpt.describe(flowsr_lora_file)
    for expected in ["FlowSR checkpoint (public LoRA format)", "138 tensors", "rank 4, lora_alpha 8",
                     "scaling 2", "to_q, to_k", "130 tensors: 128 LoRA, 2 whole weights (conv_in.bias, conv_in.weight)",
                     "VAE LoRA (adapter 'vae_skip'): rank 2", "scaling 4", "cross-attention width 32",
                     "problems:\n  none"]:
        assert expected in text, expected


def test_describe_flags_a_checkpoint_for_sdxl(tmp_path):
    path = write_flowsr_lora(tmp_path / "xl.safetensors", vae_targets=None, unet_targets=["to_k"],
                             unet_overrides={"cross_attention_dim": 2048})
    report = ckpt.check(path)
    assert "expects base model: SDXL (cross-attention width 2048)" in report.text
    assert not report.ok and "will not load" in report.problems[0]


def test_describe_regex_targets(tmp_path):
    path = write_flowsr_lora(tmp_path / "r.safetensors", unet_targets=r".*to_q", vae_targets=None)
    assert "target modules: regex '.*to_q'" in ckpt.describe(path)
    assert "VAE LoRA: none" in ckpt.describe(path)


def test_describe_small_model_file(tmp_path):
    from flowsr.models.tiny import TinyFlowSR, save_tiny

    path = tmp_path / "tiny.safetensors"
    save_tiny(TinyFlowSR({"latent_factor": 2, "unet": {"block_out_channels": [8, 8], "layers_per_block": 1,
                                                       "norm_num_groups": 4,
                                                       "down_block_types": ["DownBlock2D"] * 2,
                                                       "up_block_types": ["UpBlock2D"] * 2}}), path)
    report = ckpt.check(path)
    assert report.ok and "FlowSR full model" in report.text and "needs no base model" in report.text


# ------------------------------------------------------------------------------------------------ saving

def test_save_round_trip(tmp_path):
    unet, vae = make_unet(), make_vae()
    ckpt.add_lora(unet, 8, ["to_q", "to_v", "conv1"], ckpt.UNET_ADAPTER)
    ckpt.add_lora(vae, 4, ["encoder.conv_in"], ckpt.VAE_ADAPTER)
    with torch.no_grad():
        for name, p in [*unet.named_parameters(), *vae.named_parameters()]:
            if "lora_" in name or name.startswith("conv_in."):
                p.normal_()
    path = tmp_path / "saved.safetensors"
    ckpt.save_lora_checkpoint(path, ckpt.lora_state_dict(unet, ckpt.UNET_ADAPTER, whole_weights=["conv_in."]),
                              8, ["to_q", "to_v", "conv1"], ckpt.lora_state_dict(vae, ckpt.VAE_ADAPTER),
                              4, ["encoder.conv_in"], metadata={"trained_by": "test"})
    assert ckpt.check(path).ok
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
    unet = ckpt.add_lora(make_unet(), 4, ["to_q"], ckpt.UNET_ADAPTER)
    state = ckpt.lora_state_dict(unet, ckpt.UNET_ADAPTER)
    path = tmp_path / "half.safetensors"
    ckpt.save_lora_checkpoint(path, state, 4, {"to_q"}, dtype=torch.float16)
    assert {entry["dtype"] for entry in ckpt.read_safetensors_header(path).tensors.values()} == {"F16"}
    assert ckpt.read_checkpoint(path).unet.target_modules == ["to_q"]
    with pytest.raises(ValueError, match="vae_rank"):
        ckpt.save_lora_checkpoint(path, state, 4, ["to_q"], vae_state=state)


def test_tiny_unet_config_is_sd_like():
    """Guard the fixture: the LoRA tests rely on SD 2.1's linear-projection transformer layout."""
    unet = make_unet()
    assert TINY_UNET_CONFIG["use_linear_projection"] and isinstance(unet.down_blocks[0].attentions[0].proj_in,
                                                                    torch.nn.Linear)
