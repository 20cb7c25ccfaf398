"""The upscale options, declared once: checks, host spellings, and the command-line flags made from them."""
import argparse

import pytest

from flowsr.errors import BadInputError
from flowsr.options import (AUTOMATIC, SEED, STEPS, TILE_OVERLAP, TILE_SIZE, UPSCALE_OPTIONS, add_upscale_options,
                            check_upscale_options, cli_labels)


def test_defaults_and_every_documented_value_pass():
    check_upscale_options({name: option.default for name, option in UPSCALE_OPTIONS.items()})
    check_upscale_options(dict(scale=1, steps=50, schedule="sd3", tile_size=0, tile_overlap=512, tile_batch=1,
                               color_fix="none", seed=0))
    check_upscale_options(dict(tile_size=16, tile_overlap=8, scale=8.0))


@pytest.mark.parametrize("values, message", [
    (dict(scale=0), "scale must be between 1 and 8, got 0"),
    (dict(scale=8.5), "scale must be between 1 and 8, got 8.5"),
    (dict(steps=0), "steps must be between 1 and 50, got 0"),
    (dict(steps=2.0), "steps must be a whole number, got 2.0"),
    (dict(steps="4"), "steps must be a whole number, got '4'"),
    (dict(steps=True), "steps must be a whole number"),
    (dict(scale=None), "scale must be set"),
    (dict(schedule="ddim"), "schedule must be one of uniform, sd3, got 'ddim'"),
    (dict(color_fix="auto"), "colour fix must be one of wavelet, adain, none"),
    (dict(tile_size=8), r"tile size must be 0 \(off\) or at least 16 and at most 1024, got 8"),
    (dict(tile_size=AUTOMATIC), "tile size must be 0 .off. or at least 16 and at most 1024, got -1"),
    (dict(tile_size=32, tile_overlap=17), r"tile overlap must be at most half the tile size \(32\), got 17"),
    (dict(tile_overlap=-4), "tile overlap must be between 0 and 512, got -4"),
    (dict(tile_batch=0), "tile batch must be between 1 and 64"),
    (dict(seed=-2), "seed must be between 0 and 18446744073709551615, got -2"),
])
def test_a_wrong_value_is_named_with_what_would_be_right(values, message):
    with pytest.raises(BadInputError, match=message):
        check_upscale_options(values)


def test_labels_name_the_option_as_the_caller_knows_it():
    with pytest.raises(BadInputError, match="^--tile-overlap must be at most half the tile size"):
        check_upscale_options(dict(tile_size=16, tile_overlap=20), labels=cli_labels())
    with pytest.raises(TypeError, match="tile_sise"):
        check_upscale_options(dict(tile_sise=16))


def test_overlap_with_untiled_or_automatic_tiles_is_left_to_the_pipeline():
    check_upscale_options(dict(tile_size=0, tile_overlap=100))
    check_upscale_options(dict(tile_size=None, tile_overlap=100))


def test_hosts_spell_automatic_as_minus_one_and_save_sliders_as_floats():
    assert TILE_SIZE.from_host(-1) is None and TILE_SIZE.to_host(None) == -1
    assert TILE_SIZE.from_host(0) == 0 and TILE_SIZE.from_host(32.0) == 32 and type(TILE_SIZE.from_host(32.0)) is int
    assert STEPS.from_host(-1) == -1, "steps has no automatic value: -1 stays wrong"
    assert TILE_OVERLAP.from_host(7.5) == 7.5, "not a whole number: left for the check to refuse"
    assert (TILE_SIZE.lowest, SEED.lowest, STEPS.lowest) == (-1, -1, 1)


def test_command_line_flags_are_made_from_the_definitions():
    parser = argparse.ArgumentParser()
    add_upscale_options(parser)
    defaults = vars(parser.parse_args([]))
    assert defaults == {**{name: option.default for name, option in UPSCALE_OPTIONS.items()}, "dtype": "auto",
                        "compile": False}
    parsed = parser.parse_args(["--tile-size", "0", "--schedule", "sd3", "--scale", "2.5", "--seed", "7"])
    assert (parsed.tile_size, parsed.schedule, parsed.scale, parsed.seed) == (0, "sd3", 2.5, 7)
    help_text = " ".join(parser.format_help().split())
    assert "Left out: chosen from free memory" in help_text and "0: off." in help_text
