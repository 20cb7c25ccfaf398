"""Stand-in for the progress bar of ``comfy.utils`` (checked against Comfy-Org/ComfyUI a125cd84b054).

ComfyUI's server installs the global hook; its hook also raises when the Cancel button was pressed
(main.py calls ``throw_exception_if_processing_interrupted`` in it).
"""
from __future__ import annotations

PROGRESS_BAR_ENABLED = True
PROGRESS_BAR_HOOK = None


def set_progress_bar_global_hook(function) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK
        self.node_id = node_id

    def update_absolute(self, value, total=None, preview=None):
        self.total = self.total if total is None else total
        self.current = min(value, self.total)
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)
