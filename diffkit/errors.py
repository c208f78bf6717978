"""diffkit's errors: two kinds, by what the user does next.

- :class:`UserError` (exit 2): the input is wrong (a spec, an option, a file, a folder in the way). Raised
  before any work where it can be; nothing was written. Its message says what to change.
- :class:`RunFailure` (exit 1): a run that began failed (a plugin raised, the model returned NaN). Its
  message names the culprit; what was kept of the run is said by whoever drove it.

Frontends catch these two base classes and nothing else of diffkit's: a new error type only has to
derive from the right one. Each also derives from the builtin its callers have always caught
(``ValueError``, ``FileNotFoundError``, ``LookupError``, ...), so existing ``except`` clauses keep working.
"""

from __future__ import annotations


class DiffkitError(Exception):
    """Base of every error diffkit raises on purpose; its message is written for the user."""

    exit_code = 1


class UserError(DiffkitError, ValueError):
    """Bad input the user can fix: exit 2, nothing done."""

    exit_code = 2


class RunFailure(DiffkitError, RuntimeError):
    """A run that began failed: exit 1."""

    exit_code = 1


class OutputInTheWay(UserError, FileExistsError):
    """``--out`` holds files of another run, an interrupted run, or is a file: refused before any work."""
