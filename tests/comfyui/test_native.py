"""Apply FlowSR's patches and refusals, on stand-ins for ComfyUI's MODEL and VAE that hold the tiny SD
networks in ComfyUI's (LDM) layout. The real ComfyUI runs the native nodes in tests/host/comfyui_native.py."""
from __future__ import annotations

import json
import types

import pytest
import torch

from tests.conftest import make_unet, make_vae, write_flowsr_lora
from tests.ldm_layout import ldm_unet_key, ldm_vae_key


class FakePatcher:
    """What Apply FlowSR uses of ComfyUI's ModelPatcher: clone, patches by state-dict key, attachments."""

    def __init__(self, state: dict, unet_config: dict, backup: dict = None):
        self.state, self.patches, self.attachments = state, {}, {}
        self.backup = {} if backup is None else backup  # shared by clones, as ComfyUI's is
        self.model = types.SimpleNamespace(model_config=types.SimpleNamespace(unet_config=unet_config))

    def clone(self) -> "FakePatcher":
        clone = FakePatcher(self.state, self.model.model_config.unet_config, self.backup)
        clone.patches, clone.attachments = {k: list(v) for k, v in self.patches.items()}, dict(self.attachments)
        return clone

    def model_state_dict(self) -> dict:
        return self.state

    def get_key_patches(self) -> dict:
        return {key: [(self.backup.get(key, value), lambda weight: weight)] for key, value in self.state.items()}

    def load(self) -> None:
        """As ComfyUI loads a clone in full: the shared weights patched in place, the originals backed up."""
        patched = self.patched()
        for key in self.patches:
            self.backup.setdefault(key, self.state[key])
            self.state[key] = patched[key]

    def add_patches(self, patches: dict, strength: float = 1.0) -> list:
        for key, patch in patches.items():
            self.patches.setdefault(key, []).append((strength, patch))
        return list(patches)

    def get_attachment(self, key):
        return self.attachments.get(key)

    def set_attachments(self, key, value) -> None:
        self.attachments[key] = value

    def patched(self) -> dict:
        """The weights as ComfyUI's calculate_weight makes them: W + s alpha/rank up@down, or W + s diff."""
        weights = {key: self.backup.get(key, value).clone().float() for key, value in self.state.items()}
        for key, entries in self.patches.items():
            for strength, patch in entries:
                if isinstance(patch, tuple):
                    kind, (diff,) = patch
                    assert kind == "diff"
                    weights[key] += strength * diff
                else:
                    up, down, alpha, *_ = patch.weights
                    delta = up.flatten(1) @ down.flatten(1)
                    weights[key] += (strength * alpha / down.shape[0] * delta).reshape(weights[key].shape)
        return weights


def ldm_model(unet) -> FakePatcher:
    attention_up = ["CrossAttn" in kind for kind in unet.config.up_block_types]
    state = {f"diffusion_model.{ldm_unet_key(k, unet.config.layers_per_block, attention_up)}": v
             for k, v in unet.state_dict().items()}
    return FakePatcher(state, {"context_dim": unet.config.cross_attention_dim,
                               "num_res_blocks": [unet.config.layers_per_block] * len(unet.config.block_out_channels)})


def ldm_vae(vae) -> types.SimpleNamespace:
    levels = len(vae.config.block_out_channels)
    state = {}
    for name, value in vae.state_dict().items():
        key = ldm_vae_key(name, levels)
        state[key] = value[:, :, None, None] if ".mid.attn_1." in key and value.ndim == 2 else value
    return types.SimpleNamespace(patcher=FakePatcher(state, {}), first_stage_model=None)


@pytest.fixture
def native(pack):
    return pack.nodes.native


@pytest.fixture
def in_models_flowsr(comfy_home, flowsr_lora_file):
    """flowsr.safetensors (the tiny public-format file) in models/flowsr."""
    target = comfy_home / "models" / "flowsr" / "flowsr.safetensors"
    target.write_bytes(flowsr_lora_file.read_bytes())
    return target


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_patches_give_the_packs_merged_weights_scaled_by_strength(native, in_models_flowsr, tiny_sd_folder, strength):
    from flowsr.loading import load_model

    base = ldm_model(make_unet())
    patched = native.apply(base, "flowsr.safetensors", strength)
    assert base.patches == {} and base.get_attachment(native.ATTACHMENT) is None  # other branches see the original
    vae = ldm_vae(make_vae())
    vae_patcher = native._flowsr_patch(patched).vae_patcher(vae)
    assert vae_patcher is not vae.patcher and vae.patcher.patches == {}
    assert native._flowsr_patch(patched).vae_patcher(vae) is vae_patcher  # a second upscale finds it

    full = load_model(in_models_flowsr, tiny_sd_folder, device="cpu", dtype="fp32")  # peft, merged
    original_unet, original_vae = make_unet().state_dict(), make_vae().state_dict()
    for got, module, original in ((ldm_model_weights(patched), full.unet, original_unet),
                                  (ldm_vae_weights(vae_patcher), full.vae, original_vae)):
        for name, merged in module.state_dict().items():
            expected = original[name] + strength * (merged - original[name])
            torch.testing.assert_close(got[name].reshape(expected.shape), expected, rtol=1e-5, atol=1e-6, msg=name)
    assert sum(1 for entries in patched.patches.values() for _, p in entries if not isinstance(p, tuple)) > 10


def ldm_model_weights(patcher: FakePatcher) -> dict:
    unet = make_unet()
    attention_up = ["CrossAttn" in kind for kind in unet.config.up_block_types]
    weights = patcher.patched()
    return {name: weights[f"diffusion_model.{ldm_unet_key(name, unet.config.layers_per_block, attention_up)}"]
            for name in unet.state_dict()}


def ldm_vae_weights(patcher: FakePatcher) -> dict:
    levels = len(make_vae().config.block_out_channels)
    weights = patcher.patched()
    return {name: weights[ldm_vae_key(name, levels)] for name in make_vae().state_dict()}


def test_a_second_apply_while_the_first_is_loaded_patches_the_original_weights(native, in_models_flowsr):
    base = ldm_model(make_unet())
    first = native.apply(base, "flowsr.safetensors", 1.0)
    expected = first.patched()
    first.load()  # ComfyUI patched the shared weights in place: the live state dict now holds FlowSR
    second = native.apply(base, "flowsr.safetensors", 1.0)
    for key, value in second.patched().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_flowsr_twice_on_one_model_is_refused(native, in_models_flowsr):
    patched = native.apply(ldm_model(make_unet()), "flowsr.safetensors", 1.0)
    with pytest.raises(native.flowsr.BadInputError, match="already applied"):
        native.apply(patched, "flowsr.safetensors", 1.0)


def test_a_model_of_another_family_is_refused_naming_what_to_load(native, in_models_flowsr):
    sdxl = ldm_model(make_unet())
    sdxl.model.model_config.unet_config["context_dim"] = 2048
    with pytest.raises(native.flowsr.CheckpointError, match=r"this MODEL is SDXL.*'Load Checkpoint'"):
        native.apply(sdxl, "flowsr.safetensors", 1.0)


def test_a_model_without_the_files_layers_is_refused(native, comfy_home):
    write_flowsr_lora(comfy_home / "models" / "flowsr" / "wide.safetensors",
                      unet_overrides=dict(block_out_channels=(32, 48)), whole_weights=False, vae_targets=None)
    with pytest.raises(native.flowsr.CheckpointError, match="does not fit this UNet.*'Load Checkpoint'"):
        native.apply(ldm_model(make_unet()), "wide.safetensors", 1.0)


def write_kohya_lora(path) -> None:
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)}, str(path))


@pytest.mark.parametrize("kind, advice", [("builtin", "Load FlowSR Model"), ("small model", "Load FlowSR Model"),
                                          ("sd lora", "Load LoRA"), ("other", "chunjie-spring/FlowSR"),
                                          ("corrupt", "download it again")])
def test_wrong_files_are_refused_naming_what_to_load_instead(native, comfy_home, tiny_model_file, kind, advice):
    folder = comfy_home / "models" / "flowsr"
    names = {"builtin": native.flowsr.BUILTIN_MODEL_NAME, "small model": tiny_model_file.name}
    if kind == "sd lora":
        write_kohya_lora(folder / "style.safetensors")
        names[kind] = "style.safetensors"
    elif kind == "other":
        from safetensors.torch import save_file

        save_file({"weight": torch.zeros(2)}, str(folder / "other.safetensors"))
        names[kind] = "other.safetensors"
    elif kind == "corrupt":
        header = json.dumps({"t0": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
        (folder / "cut.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
        names[kind] = "cut.safetensors"
    with pytest.raises(native.flowsr.FlowSRError, match=advice):
        native.apply(ldm_model(make_unet()), names[kind], 1.0)


def test_upscale_refuses_a_model_without_flowsr_and_a_foreign_conditioning(native, in_models_flowsr, make_image):
    plain = ldm_model(make_unet())
    vae = ldm_vae(make_vae())
    conditioning = [[torch.zeros(1, 77, 32), {}]]
    with pytest.raises(native.flowsr.BadInputError, match="through 'Apply FlowSR' first"):
        native.upscale(plain, vae, conditioning, make_image(), 2.0, -1, -1, "none", -1)
    patched = native.apply(plain, "flowsr.safetensors", 1.0)
    with pytest.raises(native.flowsr.BadInputError, match="width 768.*CLIP of the same checkpoint"):
        native.upscale(patched, vae, [[torch.zeros(1, 77, 768), {}]], make_image(), 2.0, -1, -1, "none", -1)
    with pytest.raises(native.flowsr.BadInputError, match="CLIP Text Encode"):
        native.upscale(patched, vae, "a prompt", make_image(), 2.0, -1, -1, "none", -1)
    with pytest.raises(native.flowsr.BadInputError, match="one prompt"):
        native.upscale(patched, vae, conditioning * 2, make_image(), 2.0, -1, -1, "none", -1)
