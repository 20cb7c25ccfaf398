"""Stand-in for modules/cmd_args.py (v1.10.1): the arguments the extension reads, with the same flags,
types and defaults (--use-cpu nargs='+' lower-cased, --no-half, --ckpt-dir, --skip-install)."""
import argparse

parser = argparse.ArgumentParser()
parser.add_argument("--ckpt-dir", type=str, default=None, help="Path to directory with stable diffusion checkpoints")
parser.add_argument("--no-half", action="store_true", help="do not switch the model to 16-bit floats")
parser.add_argument("--use-cpu", nargs="+", help="use CPU as torch device for specified modules", default=[],
                    type=str.lower)
parser.add_argument("--skip-install", action="store_true", help="launch.py argument: skip installation of packages")
