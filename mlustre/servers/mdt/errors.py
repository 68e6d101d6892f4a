"""errors.py - the one exception of the MDT's storage: a POSIX errno for the client."""

from __future__ import annotations

from ...protocol.errors import ErrnoError


class MdtError(ErrnoError):
    """An operation failed with a POSIX errno (positive int in .errno)."""


def fail(code: int, msg: str = "") -> MdtError:
    """The error to raise (``raise fail(errno.ENOENT)``): the operation leaves no trace."""
    return MdtError(code, msg)
