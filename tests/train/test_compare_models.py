import json
import sys

import pytest
import torch
from PIL import Image

from flowsr import pipeline
from flowsr.models.tiny import TinyFlowSR, save_tiny
from train import compare_models
from train.data import list_images, read_image
from train.held_out import degrade_folder, make_lr_sets

# An "upscaler" program for --upscaler: nearest-neighbour x4 of every PNG in {lr} into {out}.
NEAREST = ("import sys, pathlib; from PIL import Image; [Image.open(p).resize((Image.open(p).width * 4, "
           "Image.open(p).height * 4), Image.NEAREST).save(pathlib.Path(sys.argv[2]) / p.name) "
           "for p in pathlib.Path(sys.argv[1]).glob('*.png')]")


def test_compare_models_scores_every_method_on_clean_and_mild_lr(tmp_path, monkeypatch, make_photo,
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
    nearest = f'nearest={sys.executable} -c "{NEAREST}" {{lr}} {{out}}'
    monkeypatch.setattr(sys, "argv", ["compare_models", "--hr", str(hr_dir), "--no-ssimulacra2", "--json", str(out),
                                      "--model", f"one={model_path}@1", "--model", f"two={model_path}@2",
                                      "--upscaler", nearest])
    compare_models.main()
    means = json.loads(out.read_text())
    assert set(means) == {"bicubic", "Lanczos", "one", "two", "nearest"}
    for method in means.values():
        assert set(method) == {"bicubic", "mild"}
        for kind in method.values():
            assert 5 < kind["PSNR-Y"] < 100 and -1 <= kind["SSIM-Y"] <= 1 and "SSIMULACRA2" not in kind
            assert set(kind["per_image"]) == {"photo0", "photo1"}
    assert means["one"]["bicubic"]["PSNR-Y"] != means["two"]["bicubic"]["PSNR-Y"]   # the step counts differ
    assert means["nearest"]["bicubic"]["PSNR-Y"] < means["bicubic"]["bicubic"]["PSNR-Y"]  # nearest is worse
    assert means["bicubic"]["mild"]["PSNR-Y"] < means["bicubic"]["bicubic"]["PSNR-Y"]     # mild LR lost detail
    assert len(loads) == 1   # one pipeline per file, reused across images and step counts


def test_degrade_folder_writes_the_lr_images_compare_models_scores(tmp_path, make_photo):
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    for i in range(3):
        Image.fromarray(make_photo(64, 64 + 8 * i, i)).save(hr_dir / f"photo{i}.png")
    hr_images = {path.stem: read_image(path) for path in list_images(hr_dir)}
    for kind in ("mild", "Real-ESRGAN"):
        degrade_folder(str(hr_dir), str(tmp_path / kind), scale=4, seed=5, kind=kind)
        scored = make_lr_sets(hr_images, 4, seed=5, kinds=(kind,))[kind]
        for name, lr in scored.items():
            assert torch.equal(read_image(tmp_path / kind / f"{name}.png"), lr)


def test_a_model_path_that_is_not_there_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nothing.safetensors"
    monkeypatch.setattr(sys, "argv", ["compare_models", "--hr", str(tmp_path / "no-photos"),
                                      "--model", f"a = b={missing}@1"])
    with pytest.raises(SystemExit) as exit_info:
        compare_models.main()
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "b=" in error and "the name ends at the first '='" in error
