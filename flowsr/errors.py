"""Errors a user can act on. Hosts and the CLI show their message as is, without a traceback."""


class FlowSRError(Exception):
    """Base class: the message says what went wrong and what to do."""


class BadInputError(FlowSRError, ValueError):
    """An image, an option or a scale the pipeline cannot take."""


class CheckpointError(FlowSRError):
    """A weights file that is missing, corrupt, or made for another base model."""


class Cancelled(FlowSRError):
    """The caller's cancel hook asked to stop; raised between tiles."""


class OutOfMemoryError(FlowSRError):
    """The accelerator ran out of memory even with the smallest tiles; hosts may free memory and retry."""
