"""The library's own exception types.

Every problem a user can cause (a missing file, a wrong shape, NaN features, a
model that does not fit the data) raises a `DlsaError` whose message is one
line naming the file, what is wrong and what to do. The CLI prints that line
and exits non-zero; nothing in the library prints.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DlsaError", "InputError", "ModelMismatchError", "TrainingError"]


class DlsaError(Exception):
    """A problem the user can fix. `str(err)` is the one line to show."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.path = None if path is None else Path(path)
        self.hint = hint
        text = f"{self.path}: {message}" if self.path is not None else message
        if hint:
            text = f"{text} ({hint})"
        super().__init__(text)


class InputError(DlsaError):
    """An input file is missing, unreadable or holds data of the wrong form."""


class ModelMismatchError(DlsaError):
    """A model file does not fit the data or the other model files it is used with."""


class TrainingError(DlsaError):
    """Training failed in a way the user can fix (diverged, too little data)."""
