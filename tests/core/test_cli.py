"""The command line: files and folders in and out, exit codes, no tracebacks for user mistakes."""
import numpy as np
import pytest
from PIL import Image

from flowsr.cli import main


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.random.randint(0, 255, (12, 16, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.random.randint(0, 255, (10, 10, 4), np.uint8)).save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_single_file_to_file(tiny_checkpoint, photos, tmp_path):
    out = tmp_path / "big.jpg"
    code = main(["upscale", str(photos / "a.png"), "-o", str(out), "--checkpoint", str(tiny_checkpoint),
                 "--scale", "2", "--steps", "2", "--schedule", "sd3", "--tile-size", "16", "--tile-overlap", "4",
                 "--color-fix", "adain", "--dtype", "fp32", "--device", "cpu"])
    assert code == 0 and Image.open(out).size == (32, 24)


def test_folder_to_folder(tiny_checkpoint, photos, tmp_path):
    assert main(["upscale", str(photos), "-o", str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoint)]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a.png", "b.png"]
    assert Image.open(tmp_path / "out" / "b.png").mode == "RGBA"


def test_unreadable_image_is_skipped_and_reported(tiny_checkpoint, photos, tmp_path, capsys):
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    code = main(["upscale", str(photos), "-o", str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoint)])
    assert code == 2 and (tmp_path / "out" / "a.png").exists()
    assert "broken.png" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--scale", "0"], "scale"), (["--scale", "12"], "scale"), (["--tile-size", "3"], "tile size"),
    (["--device", "cuda:7"], "cuda"),
])
def test_bad_options_exit_2_with_a_message(tiny_checkpoint, photos, tmp_path, capsys, extra, message):
    code = main(["upscale", str(photos / "a.png"), "-o", str(tmp_path / "x.png"), "--checkpoint",
                 str(tiny_checkpoint), *extra])
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err and "Traceback" not in captured.err


def test_missing_input_and_many_inputs_to_one_file(tiny_checkpoint, photos, tmp_path, capsys):
    assert main(["upscale", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["upscale", str(photos), "-o", str(tmp_path / "o.png"), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "folder" in capsys.readouterr().err


def test_corrupt_checkpoint_exits_2(photos, tmp_path, capsys):
    bad = tmp_path / "flowsr.safetensors"
    bad.write_bytes(b"\x00" * 100)
    assert main(["upscale", str(photos / "a.png"), "-o", str(tmp_path / "o.png"), "--checkpoint", str(bad)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_check_exits_0_for_usable_files_and_2_otherwise(flowsr_lora_file, tiny_checkpoint, tmp_path, capsys):
    assert main(["check", str(flowsr_lora_file)]) == 0
    assert "rank" in capsys.readouterr().out.lower()
    assert main(["check", str(tiny_checkpoint)]) == 0
    from safetensors.torch import save_file
    import torch

    base = tmp_path / "v2-1_512-ema-pruned.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(base))
    assert main(["check", str(base)]) == 2
    assert "--base-model" in capsys.readouterr().out
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10")
    assert main(["check", str(broken)]) == 2
