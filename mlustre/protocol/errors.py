"""errors.py - exceptions shared by client and servers."""

from __future__ import annotations

import errno
import os


class ProtocolError(Exception):
    """The peer sent something this side cannot accept; the connection is closed."""


class RpcError(Exception):
    """A request got a reply with a non-zero status (a positive errno)."""

    def __init__(self, status: int, msg: str = "") -> None:
        self.errno = status
        super().__init__(msg or f"{errno.errorcode.get(status, status)}: {os.strerror(status)}")


class RpcTimeout(Exception):
    """No reply came within the request's timeout."""


class ConnectionLost(Exception):
    """The connection closed before a reply came."""


class AuthError(Exception):
    """A connection failed the shared-key handshake (wrong or missing key on either
    side, or a peer that does not authenticate). Never retried: a wrong key stays
    wrong, so callers report it at once instead of waiting out a timeout."""
