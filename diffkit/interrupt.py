"""SIGINT and SIGTERM: runs stop cleanly, and a commit of finished outputs is never cut in half.

The command line installs :func:`install`, so a signal raises :class:`Interrupted` wherever the run
is; ``finally`` blocks remove temp files and ``diffkit`` exits 130 (SIGINT) or 143 (SIGTERM) with one
line. :func:`deferred` guards the few renames that publish outputs or checkpoints: a signal arriving
inside it is held and delivered right after, so the folder holds the old files or all the new ones.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A run was stopped by a signal. A BaseException, as KeyboardInterrupt is: ``except Exception`` lets it by."""

    def __init__(self, signum: int):
        self.signum = signum
        self.committed = False  # set by io.staged_dir when the signal was held until its outputs were in
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` in the main thread."""
    for sig in SIGNALS:
        signal.signal(sig, _raise)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for the duration of the block, then deliver the first one to the usual handler."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield
        return
    pending: list[int] = []
    old = {sig: signal.signal(sig, lambda n, f: pending.append(n)) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])
