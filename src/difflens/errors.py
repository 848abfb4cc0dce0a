"""User-facing errors.

Every problem the user can fix (bad path, wrong flag, incompatible models, ...) is raised as a
:class:`DifflensError` with a one-line message that says what is wrong and what to do.  The CLI
prints that line and exits non-zero without a traceback; library users can catch it.
"""

from __future__ import annotations


class DifflensError(Exception):
    """A user error: the message is one line naming the problem and the fix."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
