"""Command-line options of the FlowSR extension; AUTOMATIC1111 and Forge call ``preload`` before parsing them."""
import os

from modules import paths


def preload(parser):
    # The name follows A1111's rule for upscalers: class UpscalerFlowSR reads cmd_opts.flowsr_models_path.
    parser.add_argument("--flowsr-models-path", type=str, default=os.path.join(paths.models_path, "FlowSR"),
                        help="Path to directory with FlowSR weights (flowsr.safetensors).")
