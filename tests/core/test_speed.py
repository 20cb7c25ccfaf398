"""The speed levers change nothing but speed: compiled regions and channels-last against eager, and the way
back to eager when the compiler is missing or fails."""
from __future__ import annotations

import argparse
import logging

import pytest
import torch
from tests.conftest import TEXT_WIDTH, make_unet, make_vae

from flowsr import FlowSRPipeline
from flowsr.errors import BadInputError
from flowsr.models.sd import SDFlowSRModel
from flowsr.options import COMPILE, LOAD_OPTIONS, add_upscale_options, check_option
from flowsr.speed import REGION_CLASSES, compile_network, compiler_problem, use_channels_last

#: Tiles of 16 latent pixels over a 24-pixel grid (40 px x4, padded to 192): the border tile is shifted inwards,
#: so every tile is 16x16.
TILED = dict(scale=4, tile_size=16, tile_overlap=4, color_fix="none")


def tiny_sd_pipeline() -> FlowSRPipeline:
    """SD 2.1's classes at a few channels: resnets and transformer blocks, both kinds of region."""
    torch.manual_seed(3)
    return FlowSRPipeline(SDFlowSRModel(make_unet(), make_vae(), torch.randn(1, 77, TEXT_WIDTH)))


def levels(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference in 8-bit grey levels of two images in [0, 1], each rounded as the CLI saves it."""
    return float(((a * 255).round() - (b * 255).round()).abs().max())


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))


def dynamo_graphs() -> int:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def test_compiled_regions_match_eager_within_one_grey_level_and_tiles_compile_once(image):
    torch._dynamo.reset()
    pipe = tiny_sd_pipeline()
    eager = pipe.upscale_tensor(image, **TILED)
    regions = compile_network(pipe.model)
    assert regions is not None and len(regions) == sum(type(m).__name__ in REGION_CLASSES
                                                         for m in pipe.model.unet.modules()) > 0
    compiled = pipe.upscale_tensor(image, **TILED)
    assert levels(compiled, eager) <= 1
    graphs = dynamo_graphs()
    assert graphs > 0, "nothing was compiled"
    taller = torch.rand(1, 3, 56, 40, generator=torch.Generator().manual_seed(1))
    pipe.upscale_tensor(taller, **TILED)  # another image, the same 8x8 tiles: no new compilation
    assert dynamo_graphs() == graphs
    regions.remove()
    assert levels(pipe.upscale_tensor(image, **TILED), eager) == 0, "removed regions run eagerly again"


def failing_backend(graph, example_inputs):
    raise RuntimeError("this backend always fails")


def test_a_failing_compiler_warns_once_and_the_upscale_runs_eagerly(image, caplog):
    torch._dynamo.reset()
    pipe = tiny_sd_pipeline()
    eager = pipe.upscale_tensor(image, **TILED)
    regions = compile_network(pipe.model, backend=failing_backend)
    with caplog.at_level(logging.WARNING, logger="flowsr.speed"):
        result = pipe.upscale_tensor(image, **TILED)
    assert levels(result, eager) == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "flowsr.speed"]
    assert len(messages) == 1 and "torch.compile failed" in messages[0] and "running without it" in messages[0]
    assert all(region._compiled_call_impl is None for region in regions.regions)


def test_a_missing_cpp_compiler_is_named_and_nothing_is_compiled(caplog):
    import torch._inductor.config as inductor_config

    pipe = tiny_sd_pipeline()
    with inductor_config.patch({"cpp.cxx": ("flowsr-no-such-compiler",)}):
        problem = compiler_problem(torch.device("cpu"))
        with caplog.at_level(logging.WARNING, logger="flowsr.speed"):
            assert compile_network(pipe.model) is None
    assert problem is not None and "install gcc" in problem
    assert any("torch.compile is not used" in r.getMessage() and "install gcc" in r.getMessage()
               for r in caplog.records)
    assert all(m._compiled_call_impl is None for m in pipe.model.modules())


def test_channels_last_matches_contiguous_within_one_grey_level(image):
    pipe = tiny_sd_pipeline()
    contiguous = pipe.upscale_tensor(image, **TILED)
    use_channels_last(pipe.model, True)
    assert pipe.model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.model.vae.decoder.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
    assert levels(pipe.upscale_tensor(image, **TILED), contiguous) <= 1
    use_channels_last(pipe.model, False)
    assert pipe.model.unet.conv_in.weight.is_contiguous()


def test_compile_is_one_option_with_a_command_line_flag():
    assert LOAD_OPTIONS["compile"] is COMPILE and COMPILE.default is False
    parser = argparse.ArgumentParser()
    add_upscale_options(parser)
    assert parser.parse_args([]).compile is False
    assert parser.parse_args(["--compile"]).compile is True
    assert parser.parse_args(["--no-compile"]).compile is False
    check_option(COMPILE, True)
    with pytest.raises(BadInputError, match="compile must be true or false, got 'yes'"):
        check_option(COMPILE, "yes")


def cancel_check(module, inputs):
    """A cancel check as the pipeline registers it: nothing inside a compiled region."""
    if torch.compiler.is_compiling():
        return


def test_hooks_added_and_removed_around_each_upscale_cause_no_recompilation(image):
    """The contract with the cancel checks: pre-hooks registered on the UNet's blocks, containers and layers for
    one upscale and removed after it leave the compiled code as it is (no new graphs on the next upscale)."""
    torch._dynamo.reset()
    pipe = tiny_sd_pipeline()
    compile_network(pipe.model, backend="aot_eager")  # dynamo's graphs without inductor's C++: quick
    pipe.upscale_tensor(image, **TILED)
    graphs = dynamo_graphs()
    for _ in range(2):
        handles = [m.register_forward_pre_hook(cancel_check) for m in pipe.model.unet.modules()]
        pipe.upscale_tensor(image, **TILED)
        for handle in handles:
            handle.remove()
    assert dynamo_graphs() == graphs
