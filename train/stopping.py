"""Ctrl-C and SIGTERM during training: finish the optimiser step under way, write a checkpoint of that
consistent state, and stop with one line that says how to continue.

A signal only sets a flag (a KeyboardInterrupt in the middle of a backward pass or an optimiser step would
leave nothing worth saving); the loop looks at it after each step, and all processes of a multi-process run
agree on it, so that they stop at the same step and write one checkpoint together. A second signal stops at
once, as usual; the checkpoints already written are whole either way (written into a temporary folder).
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Optional

import torch

logger = logging.getLogger("train")

SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class TrainingStopped(Exception):
    """Training stopped at a signal after writing a checkpoint; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, number: int, step: int, checkpoint):
        self.exit_code = 128 + number
        super().__init__(f"training stopped by {SIGNAL_NAMES[number]} at step {step}; checkpoint {checkpoint} "
                         "written. Continue with the same command and --resume latest (train/train_builtin.sh: "
                         "run it again)")


class StopRequest:
    """While active (a ``with`` block in the main thread), SIGINT and SIGTERM are noted instead of raised.

    A signal ignored when it starts stays ignored, as Python leaves it: a job started with nohup or in a shell's
    background is not meant to stop on the terminal's Ctrl-C.
    """

    def __init__(self):
        self.number: Optional[int] = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self._note) for number in SIGNAL_NAMES
                             if signal.getsignal(number) is not signal.SIG_IGN}
        return self

    def __exit__(self, *_) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _note(self, number: int, frame) -> None:
        if self.number is not None:  # the second signal: stop now, as without this handler
            raise KeyboardInterrupt
        self.number = number
        logger.warning("%s: finishing this step and writing a checkpoint (again to stop at once)",
                       SIGNAL_NAMES[number])

    def agreed(self, accelerator) -> Optional[int]:
        """The signal any process of the run received, the same answer in every process."""
        if accelerator.num_processes == 1:
            return self.number
        noted = torch.tensor([self.number or 0], device=accelerator.device)
        torch.distributed.all_reduce(noted, op=torch.distributed.ReduceOp.MAX)
        return int(noted.item()) or None
