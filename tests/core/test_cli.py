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
    error = capsys.readouterr().err
    assert "broken.png" in error
    assert "| 3/3 [" in error.split("\r")[-1]  # the bar counts the failed image too: the job ends at 100 %


@pytest.mark.parametrize("extra,message", [
    (["--scale", "0"], "--scale"), (["--scale", "12"], "--scale"), (["--tile-size", "3"], "--tile-size"),
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


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if the CLI gets as far as loading a model."""
    from flowsr.pipeline import FlowSRPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the problem was found")

    monkeypatch.setattr(FlowSRPipeline, "from_pretrained", refuse)


def test_an_input_is_never_replaced_unless_asked(tiny_checkpoint, photos, capsys, no_model_loading):
    source = photos / "a.png"
    before = source.read_bytes()
    assert main(["upscale", str(source), "-o", str(source)]) == 2
    assert "--overwrite-inputs" in capsys.readouterr().err and source.read_bytes() == before
    assert main(["upscale", str(photos), "-o", str(photos)]) == 2
    assert source.read_bytes() == before


def test_overwrite_inputs_replaces_the_input(tiny_checkpoint, photos):
    source = photos / "a.png"
    assert main(["upscale", str(source), "-o", str(source), "--overwrite-inputs", "--scale", "2",
                 "--checkpoint", str(tiny_checkpoint)]) == 0
    assert Image.open(source).size == (32, 24)


@pytest.mark.parametrize("source,output,message", [
    ("a.png", "notes.txt", "not an image type"), ("a.png", "big.jgp", "not an image type"),
    (".", "notes.txt", "is a file"), ("a.png", "notes.txt/sub", "cannot write"),
    ("a.png", "folder.png", "is a folder")])
def test_unusable_outputs_are_refused_before_any_work(photos, tmp_path, capsys, no_model_loading, source, output,
                                                      message):
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "folder.png").mkdir()
    assert main(["upscale", str(photos / source), "-o", str(tmp_path / output)]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_an_existing_folder_with_a_dot_takes_the_output(tiny_checkpoint, photos, tmp_path):
    (tmp_path / "run.v2").mkdir()
    assert main(["upscale", str(photos / "a.png"), "-o", str(tmp_path / "run.v2"), "--checkpoint",
                 str(tiny_checkpoint)]) == 0
    assert (tmp_path / "run.v2" / "a.png").is_file()


def write_png_header(path, width, height):
    """A PNG whose header claims width x height: what a decompression bomb looks like before decoding."""
    import zlib

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("width,height,reason", [(30000, 30000, "too large to decode safely"),
                                                 (10000, 9000, "make a 40000x36000 output, more than the")])
def test_a_decompression_bomb_is_skipped_and_the_others_written(tiny_checkpoint, photos, tmp_path, capsys,
                                                                width, height, reason):
    write_png_header(photos / "bomb.png", width, height)
    out = tmp_path / "out"
    assert main(["upscale", str(photos), "-o", str(out), "--checkpoint", str(tiny_checkpoint)]) == 2
    error = capsys.readouterr().err
    assert "bomb.png" in error and reason in error and "Traceback" not in error
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def test_exif_orientation_is_applied_and_the_colour_profile_kept(tiny_checkpoint, tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :8] = (255, 0, 0)  # the left half red: the top half once turned upright (orientation 6)
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "FlowSR test camera"
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=95, exif=exif.tobytes(), icc_profile=icc)
    out = tmp_path / "photo_x2.png"
    assert main(["upscale", str(tmp_path / "photo.jpg"), "-o", str(out), "--scale", "2", "--color-fix", "none",
                 "--checkpoint", str(tiny_checkpoint)]) == 0
    with Image.open(out) as result:
        assert result.size == (16, 32)
        red = np.asarray(result)[..., 0].astype(float)
        assert red[:16].mean() > red[16:].mean() + 100
        assert result.info["icc_profile"] == icc
        assert result.getexif().get(0x010F) == "FlowSR test camera" and 0x0112 not in result.getexif()


def test_out_of_memory_is_reported_without_a_traceback(tiny_checkpoint, photos, tmp_path, capsys, monkeypatch):
    import flowsr
    from flowsr.pipeline import FlowSRPipeline

    def out_of_memory(*args, **kwargs):
        raise flowsr.OutOfMemoryError("out of memory even with the smallest tiles; free memory")

    monkeypatch.setattr(FlowSRPipeline, "upscale", out_of_memory)
    assert main(["upscale", str(photos), "-o", str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoint)]) == 2
    error = capsys.readouterr().err
    assert "a.png" in error and "out of memory" in error and "Traceback" not in error


def test_out_of_memory_while_loading_says_what_to_do(photos, tmp_path, capsys, monkeypatch):
    from flowsr.pipeline import FlowSRPipeline

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(FlowSRPipeline, "from_pretrained", out_of_memory)
    assert main(["upscale", str(photos / "a.png"), "-o", str(tmp_path / "o.png")]) == 1
    error = capsys.readouterr().err
    assert "out of memory" in error and "--tile-size" in error


def test_options_are_checked_once_before_anything_is_loaded(tmp_path, capsys, no_model_loading):
    folder = tmp_path / "twenty"
    folder.mkdir()
    for index in range(20):
        Image.new("RGB", (8, 8)).save(folder / f"{index}.png")
    for bad in (["--scale", "0"], ["--batch-size", "0"]):
        assert main(["upscale", str(folder), "-o", str(tmp_path / "out"), *bad]) == 2
        error = capsys.readouterr().err
        assert error.count("flowsr:") == 1 and bad[0] in error
    assert not (tmp_path / "out").exists()


def test_a_bomb_alone_is_refused_from_its_header_without_loading_the_model(tmp_path, capsys, no_model_loading):
    write_png_header(tmp_path / "bomb.png", 30000, 30000)
    assert main(["upscale", str(tmp_path / "bomb.png"), "-o", str(tmp_path / "out.png")]) == 2
    error = capsys.readouterr().err
    assert "bomb.png" in error and "1 failed" in error and "Traceback" not in error
    assert not (tmp_path / "out.png").exists()


def test_version_names_flowsr_torch_and_diffusers(capsys):
    from importlib.metadata import version

    import flowsr

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"flowsr {flowsr.__version__} (")
    assert f"torch {version('torch')}" in printed and f"diffusers {version('diffusers')}" in printed


@pytest.mark.parametrize("names", [("a/x.png", "b/x.png"), ("p.png", "p.jpg")])
def test_inputs_that_would_share_an_output_are_named(tiny_checkpoint, tmp_path, capsys, names):
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    code = main(["upscale", *(str(tmp_path / name) for name in names), "-o", str(tmp_path / "out"),
                 "--checkpoint", str(tiny_checkpoint)])
    error = capsys.readouterr().err
    assert code == 2 and " and ".join(str(tmp_path / name) for name in names) in error
    assert not (tmp_path / "out").exists()


def test_many_collisions_show_the_first_three_and_the_count(tiny_checkpoint, tmp_path, capsys):
    for folder in "ab":
        for index in range(5):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.new("RGB", (8, 8)).save(tmp_path / folder / f"{index}.png")
    code = main(["upscale", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "out"),
                 "--checkpoint", str(tiny_checkpoint)])
    error = capsys.readouterr().err
    assert code == 2 and "5 output name(s)" in error and "(and 2 more)" in error
    assert f"{tmp_path / 'a' / '2.png'} and {tmp_path / 'b' / '2.png'}" in error
    assert str(tmp_path / "a" / "3.png") not in error


@pytest.mark.parametrize("planes", [3, 4])
def test_16_bit_colour_png_gives_16_bit_colour_png_with_its_profile(tiny_checkpoint, tmp_path, planes):
    import png

    from flowsr.imagefiles import _16_bit_png

    y, x = np.mgrid[0:12, 0:16]
    pixels = np.stack([x * 4000 + 7, y * 5000 + 3, (x + y) * 2000 + 1, np.full_like(x, 65535)][:planes], -1)
    profile = b"a stand-in ICC profile"
    (tmp_path / "deep.png").write_bytes(_16_bit_png(pixels.astype(np.uint16), {"icc_profile": profile}))
    assert main(["upscale", str(tmp_path / "deep.png"), "-o", str(tmp_path / "out.png"), "--scale", "2",
                 "--checkpoint", str(tiny_checkpoint)]) == 0
    width, height, rows, info = png.Reader(filename=str(tmp_path / "out.png")).asDirect()
    out = np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, info["planes"])
    assert (width, height, info["bitdepth"], info["planes"]) == (32, 24, 16, planes)
    assert np.any(out[..., :3] % 257 != 0)  # not 8-bit values scaled up
    assert Image.open(tmp_path / "out.png").info["icc_profile"] == profile
    if planes == 4:
        assert np.all(out[..., 3] == 65535)


def test_16_bit_colour_to_jpeg_is_8_bit(tiny_checkpoint, tmp_path):
    from flowsr.imagefiles import _16_bit_png

    pixels = np.full((8, 8, 3), 40000, np.uint16)
    (tmp_path / "deep.png").write_bytes(_16_bit_png(pixels, {}))
    assert main(["upscale", str(tmp_path / "deep.png"), "-o", str(tmp_path / "out.jpg"), "--scale", "2",
                 "--checkpoint", str(tiny_checkpoint)]) == 0
    out = np.asarray(Image.open(tmp_path / "out.jpg"))
    assert out.dtype == np.uint8 and abs(float(out.mean()) - 40000 / 257) < 3


def test_animations_and_multi_page_files_say_only_the_first_frame_is_upscaled(tiny_checkpoint, tmp_path, capsys):
    """One rule for files named and files found in a folder: GIFs are images too, and every file of several
    frames gets a line saying that only its first is upscaled."""
    folder = tmp_path / "in"
    folder.mkdir()
    frames = [Image.new("RGB", (8, 6), colour) for colour in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    frames[0].save(folder / "moving.gif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "apng.png", save_all=True, append_images=frames[1:2])
    frames[0].save(folder / "pages.tiff", save_all=True, append_images=frames[1:])
    Image.new("RGB", (8, 6)).save(folder / "still.png")
    assert main(["upscale", str(folder), "-o", str(tmp_path / "out"), "--scale", "2",
                 "--checkpoint", str(tiny_checkpoint)]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["apng.png", "moving.png", "pages.png", "still.png"]
    assert Image.open(tmp_path / "out" / "moving.png").size == (16, 12)
    error = capsys.readouterr().err
    assert "moving.gif has 3 frames; only the first is upscaled" in error
    assert "pages.tiff has 3 frames" in error and "apng.png has 2 frames" in error and "still.png has" not in error


@pytest.mark.parametrize("rank, launcher, speaks", [(0, True, True), (1, True, False), (1, False, True)])
def test_under_a_launcher_only_process_0_says_interrupted(tmp_path, monkeypatch, capsys, rank, launcher, speaks):
    """torchrun and accelerate send Ctrl-C to every process: one line for the job, each process exiting 130.
    Split by RANK and WORLD_SIZE alone (no launcher), each process speaks for itself."""
    from flowsr import jobs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "plan", interrupted)
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    if launcher:
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    else:
        monkeypatch.delenv("MASTER_ADDR", raising=False)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out.png")]) == 130
    assert ("interrupted" in capsys.readouterr().err) == speaks


def test_compile_without_a_cpp_compiler_says_so_and_upscales_uncompiled(tiny_checkpoint, photos, tmp_path, caplog):
    import torch._inductor.config as inductor_config

    out, plain = tmp_path / "compiled.png", tmp_path / "plain.png"
    common = ["--checkpoint", str(tiny_checkpoint), "--scale", "2", "--dtype", "fp32", "--device", "cpu"]
    with inductor_config.patch({"cpp.cxx": ("flowsr-no-such-compiler",)}), \
            caplog.at_level("WARNING", logger="flowsr.speed"):
        assert main(["upscale", str(photos / "a.png"), "-o", str(out), "--compile", *common]) == 0
    assert any("torch.compile is not used" in r.getMessage() and "install gcc" in r.getMessage()
               for r in caplog.records)
    assert main(["upscale", str(photos / "a.png"), "-o", str(plain), *common]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(plain)))


def test_16_bit_colour_png_is_read_upright_as_its_exif_says(tmp_path):
    """Orientation 6 (turned 90 degrees clockwise to view): the array comes out turned, as PIL turns 8-bit ones."""
    from flowsr.imagefiles import _16_bit_png, read_picture

    pixels = (np.arange(4 * 6 * 3, dtype=np.uint16).reshape(4, 6, 3) * 700 + 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "turned.png").write_bytes(_16_bit_png(pixels, {"exif": exif.tobytes()}))
    picture = read_picture(tmp_path / "turned.png")
    assert picture.image.dtype == np.uint16
    np.testing.assert_array_equal(picture.image, np.rot90(pixels, -1))
