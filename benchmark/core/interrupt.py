"""Ctrl-C that is never lost.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be; when that is
inside a callback Python runs without a caller to raise into (a weakref or `__del__` callback
during garbage collection, as SQLAlchemy's are), the exception is printed as "Exception ignored"
and dropped, and a grid told to stop trains on. Here the handler also remembers the interrupt,
and the training loop asks `check()` after every step: a dropped KeyboardInterrupt is raised
again there, at the next step.
"""

from __future__ import annotations

import signal
import sys
import threading

_pending = False


def _on_sigint(signum, frame) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


def install() -> None:
    """Take SIGINT in this process, where it has Python's default handler (never where it is
    ignored: a job started in a shell's background keeps ignoring it)."""
    global _pending
    _pending = False
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
        sys.unraisablehook = _quiet_dropped_interrupt


_default_unraisablehook = sys.unraisablehook


def _quiet_dropped_interrupt(unraisable) -> None:
    """A KeyboardInterrupt Python had to drop is not printed as a traceback: `check()` raises it."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        return
    _default_unraisablehook(unraisable)


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came and its first raise may have been swallowed."""
    if _pending:
        raise KeyboardInterrupt
