"""The library's own exception types.

Every problem a user can cause (a missing file, a wrong shape, NaN features, a
model that does not fit the data) raises a `DlsaError` whose message is one
line naming the file, what is wrong and what to do. The CLI prints that line
and exits non-zero; nothing in the library prints.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DlsaError", "InputError", "ModelMismatchError", "NonFiniteError", "OutputError", "TrainingError"]


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


class OutputError(DlsaError):
    """An output cannot be written where asked: it would replace an input, its folder is not
    writable, its name does not match what is written, or the disk refused the write."""


class NonFiniteError(InputError):
    """A value a user will read (a score, a log-likelihood, a metric) came out NaN or infinite.

    `rows` are the offending row indices (0-based) into the array that was checked;
    `total` the number of rows checked. Callers that know the file re-raise with its path
    and file-level row numbers through `NonFiniteError.build`.
    """

    def __init__(self, message: str, *, rows=None, total: int = 0, what: str = "", path=None, hint=None):
        super().__init__(message, path=path, hint=hint)
        self.rows = rows
        self.total = total
        self.what = what

    @classmethod
    def build(cls, what: str, rows, total: int, *, path=None, hint: str | None = None) -> NonFiniteError:
        """The one-line error for `rows` (a sequence of 0-based row numbers) of `total` rows."""
        listed = ", ".join(str(int(r)) for r in list(rows)[:5]) + (", ..." if len(rows) > 5 else "")
        msg = f"{what} is NaN or infinite for {len(rows)} of {total} rows (0-based rows {listed})"
        return cls(msg, rows=rows, total=total, what=what, path=path, hint=hint)
