from PIL import Image

from train import prepare_photos as pp


def test_photo_list_is_consistent_and_keeps_held_out_photos_free_of_share_alike():
    names = [p.name for p in pp.PHOTOS]
    assert len(names) == len(set(names))
    assert {p.split for p in pp.PHOTOS} == set(pp.SPLITS)
    assert all(p.package in pp.PACKAGES and len(p.sha256) == 64 for p in pp.PHOTOS)
    held_out = [p for p in pp.PHOTOS if p.split != "train"]
    assert 6 <= sum(p.split == "test" for p in held_out) <= 8
    assert not any(pp.is_share_alike(p) for p in held_out)  # --no-share-alike leaves val/test unchanged
    measured_or_trained = [p for p in pp.PHOTOS if p.split != "select"]
    assert {p.licence for p in measured_or_trained} <= {"CC0-1.0", "public-domain", "CC-BY-4.0", "CC-BY-SA-3.0",
                                                         "CC-BY-SA-4.0"}
    copyleft = [p for p in pp.PHOTOS if p.licence.startswith(("GPL", "LGPL"))]
    assert copyleft and all(p.split == "select" for p in copyleft)  # only measured, never trained on


def test_resize_shrinks_to_the_long_side_and_crops_to_multiples_of_16():
    big = pp.resize_and_crop(Image.new("RGB", (3000, 2001)), 1536)
    assert max(big.size) <= 1536 and all(side % 16 == 0 for side in big.size) and big.size == (1536, 1024)
    small = pp.resize_and_crop(Image.new("RGB", (451, 300)), 1024)  # never upscaled
    assert small.size == (448, 288)
    assert pp.bicubic_lr(small, 4).size == (112, 72)


def test_load_srgb_makes_grey_and_rotated_images_upright_rgb(tmp_path):
    grey = tmp_path / "grey.png"
    Image.new("L", (20, 10), 128).save(grey)
    assert pp.load_srgb(grey).mode == "RGB"
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (20, 10)).save(rotated, exif=exif)
    assert pp.load_srgb(rotated).size == (10, 20)
