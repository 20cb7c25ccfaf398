"""Stand-in for modules/shared.py (v1.10.1) with what upscalers use: cmd_opts, opts, state, models_path,
progress_print_out, sd_upscalers, device, OptionInfo, options_section and walk_files.

The real opts is built from modules/shared_options.py; the Upscaling options an upscaler reads are
registered here with their v1.10.1 defaults (ESRGAN_tile 192, ESRGAN_tile_overlap 8,
enable_upscale_progressbar True, set_scale_by_when_changing_upscaler False).
"""
import sys

from modules import cmd_args, options, shared_state, util
from modules.paths_internal import models_path  # noqa: F401

cmd_opts = cmd_args.parser.parse_args([])
parser = cmd_args.parser
OptionInfo = options.OptionInfo
options_section = options.options_section
walk_files = util.walk_files

opts = options.Options(options_section(("upscaling", "Upscaling", "postprocessing"), {
    "ESRGAN_tile": OptionInfo(192, "Tile size for ESRGAN upscalers."),
    "ESRGAN_tile_overlap": OptionInfo(8, "Tile overlap for ESRGAN upscalers."),
    "set_scale_by_when_changing_upscaler": OptionInfo(False, "Automatically set the Scale by factor based on the name of the selected Upscaler."),
    "enable_upscale_progressbar": OptionInfo(True, "Show a progress bar in the console for tiled upscaling."),
}))
state = shared_state.State()
device = None
sd_upscalers = []
progress_print_out = sys.stdout
