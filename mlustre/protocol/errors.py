"""errors.py - exceptions shared by client and servers."""

from __future__ import annotations

import errno
import os


class ErrnoError(Exception):
    """The one base of every failure that carries a POSIX errno (positive int in
    `.errno`): a reply status on the wire (RpcError), a server's refusal (ServiceError,
    MdtError, LockError). Code that turns failures into a status or a FUSEError catches
    this one class, so a new errno-carrying failure needs no new conversion."""

    def __init__(self, err: int, msg: str = "") -> None:
        self.errno = err
        super().__init__(msg or f"{errno.errorcode.get(err, err)}: {os.strerror(err)}")


class ProtocolError(Exception):
    """The peer sent something this side cannot accept; the connection is closed."""


class RpcError(ErrnoError):
    """A request got a reply with a non-zero status (a positive errno)."""


class RpcTimeout(Exception):
    """No reply came within the request's timeout."""


class ConnectionLost(Exception):
    """The connection closed before a reply came."""


class AuthError(Exception):
    """A connection failed the shared-key handshake (wrong or missing key on either
    side, or a peer that does not authenticate). Never retried: a wrong key stays
    wrong, so callers report it at once instead of waiting out a timeout."""
