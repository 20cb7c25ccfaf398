import json
import sys

import torch
from PIL import Image

from flowsr import pipeline
from flowsr.models.tiny import TinyFlowSR, save_tiny
from train import compare_models
from train.data import list_images, read_image
from train.degradations import degrade_folder


def test_compare_models_scores_both_lr_kinds_and_loads_each_model_once(tmp_path, monkeypatch, make_photo,
                                                                       small_model_config):
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    for i in range(2):
        Image.fromarray(make_photo(64, 64 + 8 * i, i)).save(hr_dir / f"photo{i}.png")
    model_path = tmp_path / "model.safetensors"
    save_tiny(TinyFlowSR(small_model_config), model_path)
    loads = []
    real_from_pretrained = pipeline.FlowSRPipeline.from_pretrained.__func__
    monkeypatch.setattr(pipeline.FlowSRPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(a) or real_from_pretrained(cls, *a, **k)))
    out = tmp_path / "means.json"
    monkeypatch.setattr(sys, "argv", ["compare_models", "--hr", str(hr_dir), "--no-ssimulacra2", "--json", str(out),
                                      "--model", f"one={model_path}@1", "--model", f"two={model_path}@2"])
    compare_models.main()
    means = json.loads(out.read_text())
    assert set(means) == {"bicubic", "one", "two"}
    for method in means.values():
        assert set(method) == {"bicubic", "Real-ESRGAN"}
        for kind in method.values():
            assert 5 < kind["PSNR-Y"] < 100 and -1 <= kind["SSIM-Y"] <= 1 and "SSIMULACRA2" not in kind
    assert means["one"]["bicubic"]["PSNR-Y"] != means["two"]["bicubic"]["PSNR-Y"]   # the step counts differ
    assert len(loads) == 1   # one pipeline per file, reused across images and step counts


def test_degrade_folder_writes_the_lr_images_compare_models_scores(tmp_path, make_photo):
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    for i in range(3):
        Image.fromarray(make_photo(64, 64 + 8 * i, i)).save(hr_dir / f"photo{i}.png")
    degrade_folder(str(hr_dir), str(tmp_path / "lr"), scale=4, seed=5)
    hr_images = {path.stem: read_image(path) for path in list_images(hr_dir)}
    scored = compare_models.make_lr_sets(hr_images, 4, seed=5)["Real-ESRGAN"]
    for name, lr in scored.items():
        assert torch.equal(read_image(tmp_path / "lr" / f"{name}.png"), lr)
