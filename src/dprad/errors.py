"""The one exception type users see: a one-line message naming the file, row, column or flag."""

from __future__ import annotations


class DpradError(Exception):
    """A problem with the user's input or request. The CLI prints ``str(err)`` on one line and exits 2."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
