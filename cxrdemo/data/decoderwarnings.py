"""Record the warnings a decoder raises in this thread, without a lock held while it decodes.

`warnings.catch_warnings` swaps process-wide state, so two threads (Streamlit sessions) using it at once
corrupt each other's filters; holding a lock around a whole decode instead made one slow file stall every
other diagnosis. Here the process-wide state is set up once while any thread records (a counter under a
short lock) and each warning goes to the list of the thread that raised it.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

_LOCK = threading.Lock()  # held only to set up or restore the shared state, never during a decode
_local = threading.local()
_users = 0
_saved: warnings.catch_warnings | None = None
_passthrough = warnings.showwarning


def _dispatch(message, category, filename, lineno, file=None, line=None) -> None:
    caught = getattr(_local, "caught", None)
    if caught is None:  # another thread's warning while a read is under way: shown as usual
        _passthrough(message, category, filename, lineno, file, line)
    else:
        caught.append(warnings.WarningMessage(message, category, filename, lineno, file, line))


@contextlib.contextmanager
def recorded_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Inside, every warning this thread raises is appended to the yielded list instead of being shown."""
    global _users, _saved, _passthrough
    outer = getattr(_local, "caught", None)
    caught: list[warnings.WarningMessage] = []
    _local.caught = caught
    with _LOCK:
        if _users == 0:
            _saved = warnings.catch_warnings()
            _saved.__enter__()
            _passthrough = warnings.showwarning
            warnings.simplefilter("always")  # count every problem of every file, not once per code location
            warnings.showwarning = _dispatch
        _users += 1
    try:
        yield caught
    finally:
        with _LOCK:
            _users -= 1
            if _users == 0 and _saved is not None:
                _saved.__exit__(None, None, None)  # filters and showwarning as they were before the first reader
                _saved = None
        _local.caught = outer
