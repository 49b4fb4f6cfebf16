"""The `neuromask` console entry point: Ctrl-C at any moment is one line and exit code 130.

The SIGINT handler is installed before anything else is imported (typer, onnxruntime...), so an
interrupt during start-up is handled like one during the work: `errors.Interrupted` unwinds
the stack (temporary files are removed on the way, see `files.atomic_write`) and this
module prints "interrupted; no files written" or names the complete files that remain.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    from .errors import Interrupted

    raise Interrupted


def _interrupt_in(exc: BaseException) -> BaseException | None:
    """The Interrupted (or KeyboardInterrupt) that `exc` is or was raised from: an extension
    module whose initialisation the signal interrupted (pybind11's, e.g. scipy's) re-raises
    it as ImportError("initialization failed") with the interrupt as its cause."""
    from .errors import Interrupted

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, (Interrupted, KeyboardInterrupt)):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def run() -> None:
    """Console entry point (see pyproject's [project.scripts])."""
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        if sys.argv[1:] == ["--version"]:  # the one answer that needs no typer at all
            from . import __version__

            sys.stdout.write(f"neuromask-onnx {__version__}\n")
            return
        from .cli import app

        app()
    except BaseException as caught:
        exc = _interrupt_in(caught)
        if exc is None:
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt this
        written = getattr(exc, "written", [])
        if written:
            names = ", ".join(written[:5]) + (f" and {len(written) - 5} more" if
                                              len(written) > 5 else "")
            sys.stderr.write(f"interrupted; these complete files remain: {names}\n")
        else:
            sys.stderr.write("interrupted; no files written\n")
        sys.stderr.flush()
        sys.exit(130)
