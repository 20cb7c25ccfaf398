"""Stand-in for modules/errors.py (v1.10.1): ``display(e, task)`` prints ``<task>: <exception type>`` and the
traceback, ending with the exception's message, to stderr."""
import sys
import traceback


def display(e: Exception, task, *, full_traceback=False):
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    print(*traceback.TracebackException.from_exception(e).format(), sep="", file=sys.stderr)
