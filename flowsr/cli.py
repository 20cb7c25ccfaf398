"""``python -m flowsr``: upscale images and folders, or check a weights file.

Exit codes: 0 success, 2 bad input (a file, an option, a checkpoint, any image of the job that failed),
1 anything else, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). The work itself is in :mod:`flowsr.jobs`.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from .errors import FlowSRError, BadInputError, CheckpointError
from .families import SD21_BASE
from .downloads import CACHE_ENVIRONMENT_VARIABLE, KNOWN_FILES
from .options import UPSCALE_OPTIONS, add_upscale_options, check_upscale_options, cli_labels

#: 128 + the signal's number, as shells and launchers report a process a signal ended.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 128 + 2, 128 + 15


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so that it unwinds the same way (partial files removed)."""


class _PrintVersion(argparse.Action):
    """``--version``: flowsr's version and those of the libraries that do the work, read from their installed
    metadata, so that asking costs no torch import."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print flowsr's version and the torch and diffusers versions it runs with")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    found = []
    for library in ("torch", "diffusers"):
        try:
            found.append(f"{library} {version(library)}")
        except PackageNotFoundError:
            found.append(f"{library} not installed")
    return f"flowsr {__version__} ({', '.join(found)}; Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowsr", description="One-step image super-resolution (FlowSR).")
    parser.add_argument("--version", action=_PrintVersion)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("upscale", help="upscale images or folders of images")
    up.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    up.add_argument("-o", "--output", type=Path, required=True,
                    help="output file (one input image) or folder (created if missing)")
    up.add_argument("--checkpoint", help="flowsr.safetensors (public weights) or a small-model file; "
                                         "default: the built-in small model")
    up.add_argument("--base-model", help=f"{SD21_BASE.name} for the public weights: a diffusers folder, a "
                                         "single-file .safetensors, or a hub id (with --allow-download)")
    up.add_argument("--allow-download", action="store_true", help="let a hub id as --base-model, and the bare names "
                    f"{' and '.join(file.filename for file in KNOWN_FILES)}, be fetched from the hub (into "
                    f"${CACHE_ENVIRONMENT_VARIABLE}, default ~/.cache/flowsr)")
    add_upscale_options(up)
    up.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu; under torchrun or accelerate "
                                                     "launch, auto and cuda mean each process's own GPU")

    add_job_flags(up)

    check = commands.add_parser("check", help="validate a FlowSR weights file and print what it holds")
    check.add_argument("file", type=Path, metavar="FILE",
                       help="a .safetensors file: FlowSR's public weights, a small-model file, or a base model "
                            "(to learn that it is one); prints its kind, ranks and problems, exit 2 if unusable")
    return parser


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    """How a job treats existing files and batches its images (not options of the upscaling itself)."""
    parser.add_argument("--resume", action="store_true",
                        help="skip inputs whose output already exists (outputs are written whole, so an existing "
                             "one is finished; refused for outputs that replace their input); without it "
                             "existing outputs are replaced")
    parser.add_argument("--overwrite-inputs", action="store_true",
                        help="allow an output to replace its own input (refused otherwise)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N",
                        help="images of the same size upscaled together in one batch (default 4)")


def upscale_options(args: argparse.Namespace) -> dict:
    """The pipeline's options from the command line, checked once before anything is loaded."""
    if args.batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    options = {name: getattr(args, name) for name in UPSCALE_OPTIONS}
    check_upscale_options(options, labels=cli_labels())
    return options


def run_upscale(args: argparse.Namespace) -> int:
    from . import jobs
    from .pipeline import FlowSRPipeline

    options = upscale_options(args)
    tasks = jobs.plan(args.inputs, args.output, overwrite_inputs=args.overwrite_inputs, resume=args.resume)
    shard = jobs.Shard.from_environment()
    connected = shard.connect()
    job = jobs.Job(tasks, shard, options, resume=args.resume, batch_size=args.batch_size, connected=connected)
    pipe = None
    if job.batches:
        pipe = FlowSRPipeline.from_pretrained(args.checkpoint, args.base_model, device=shard.device(args.device),
                                              dtype=args.dtype, allow_download=args.allow_download,
                                              compile=args.compile)
    report = job.run(pipe)
    if shard.is_main or not connected:  # unconnected (RANK and WORLD_SIZE alone), each process has its own report
        _print_outcome(tasks, report, args.output)
    code = EXIT_BAD_INPUT if report.failures else EXIT_OK
    if connected:
        _end_process_of_job(code)
    return code


def _end_process_of_job(code: int) -> None:
    """End a process of a multi-process job without interpreter finalisation. In CI, such a process died there
    after its work was done and its process group destroyed ('terminate called without an active exception',
    SIGABRT; 3 runs in about 10, never here), and its launcher would then report the whole job as failed. Every
    output is written, synced and renamed by now, so only the streams need flushing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _print_outcome(tasks, report, output: Path) -> None:
    if len(tasks) == 1 and report.written:
        print(f"{tasks[0].source} -> {tasks[0].destination}")
    else:
        print(report.summary(output), file=sys.stderr if report.failures else sys.stdout)


def run_check(args: argparse.Namespace) -> int:
    from .check import check_weights

    report = check_weights(args.file)
    print(report.text)
    return EXIT_OK if report.ok else EXIT_BAD_INPUT


def _interrupt_on_terminate(signal_number, frame) -> None:
    """SIGTERM (what launchers send to stop a job) unwinds like Ctrl-C, so partial files are removed."""
    raise Terminated


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # Only the main thread may set handlers; an ignored SIGTERM stays ignored, as Python leaves an ignored SIGINT.
    takes_sigterm = (threading.current_thread() is threading.main_thread()
                     and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN)
    previous = signal.signal(signal.SIGTERM, _interrupt_on_terminate) if takes_sigterm else None
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    """The command, with every error a user can act on turned into a message and an exit code."""
    try:
        return run_upscale(args) if args.command == "upscale" else run_check(args)
    except (BadInputError, CheckpointError) as error:
        print(f"flowsr: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FlowSRError as error:
        print(f"flowsr: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as stop:
        from .jobs import Shard

        terminated = isinstance(stop, Terminated)
        if Shard.from_environment().speaks_for_itself:  # a launcher signals every process: one line for the job
            print(f"flowsr: {'terminated' if terminated else 'interrupted'}; finished outputs are complete, "
                  "re-run with --resume to continue", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except Exception as error:
        from .devices import is_out_of_memory  # MemoryError included

        if not is_out_of_memory(error):
            raise
        print(f"flowsr: out of memory ({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
              "close other programs, or use a smaller --tile-size, --batch-size or --scale", file=sys.stderr)
        return EXIT_FAILED
