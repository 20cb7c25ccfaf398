"""Progress and cancellation of one upscale: finished network calls, and the caller's cancel hook polled
inside the networks.

Progress counts a network call once its result is stored (the last one once the output is written), so a host
never shows the end before it. Cancel is polled before every leaf module of the networks runs, not only between
calls: on a CPU one call over a large tile runs for seconds, one layer for a fraction of one. The checks are
forward pre-hooks, registered for one upscale and removed after it, so they work on any ``nn.Module`` network
(diffusers', the built-in model's, a host's own) and cost nothing when no cancel hook is given.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from .errors import Cancelled

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]


class Progress:
    """Network calls finished out of the total, reported as each finishes; ``check`` polls the cancel hook."""

    def __init__(self, total: int, callback: Optional[ProgressCallback], cancel: Optional[CancelCallback]):
        self.done, self.total, self.callback, self.cancel = 0, total, callback, cancel
        self.thread: Optional[int] = None  # the thread whose networks the checks watch

    def check(self) -> None:
        """Raise Cancelled when the cancel hook says so (a hook may also raise its host's own exception)."""
        if self.cancel is not None and self.cancel():
            raise Cancelled("upscaling was cancelled")

    def finished(self) -> None:
        """One more network call is done and its result stored."""
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)

    @contextlib.contextmanager
    def checked_inside(self, networks: Iterable[nn.Module]) -> Iterator[None]:
        """Poll the cancel hook before each leaf module of ``networks`` runs, while the block runs."""
        if self.cancel is None:
            yield
            return
        self.thread = threading.get_ident()
        leaves = {id(module): module for network in networks for module in network.modules()
                  if next(module.children(), None) is None}
        handles = [module.register_forward_pre_hook(self._before_layer) for module in leaves.values()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _before_layer(self, module: nn.Module, inputs: tuple) -> None:
        if torch.compiler.is_compiling():
            return  # compiled regions stay free of Python callbacks; the layers outside them still check
        if threading.get_ident() == self.thread:  # another thread's upscale on the same model has its own hook
            self.check()
