"""errors.py - how a server refuses a request: ServiceError (a positive errno that
becomes the reply's status) and the type-checked request field that raises it.

Kept apart from target.py so that the components a target is built from (lock service,
barrier, recovery) can raise it without importing the target itself."""

from __future__ import annotations

import errno
from typing import Any

from ..protocol.errors import ErrnoError


class ServiceError(ErrnoError):
    """A request failed with a positive errno; becomes the reply's status."""


class FieldError(ServiceError):
    """A request field missing or of the wrong type (EINVAL): what no real client sends,
    so it counts as a protocol violation (limits.Misbehaviour), unlike a value out of
    range, which an application can cause."""

    def __init__(self, msg: str) -> None:
        super().__init__(errno.EINVAL, msg)


def body_field(body: dict[str, Any], name: str, typ: type | tuple[type, ...],
               default: Any = ...) -> Any:
    """A type-checked request field: a wrong or missing one is EINVAL, never a crash."""
    value = body.get(name, default)
    if value is ...:
        raise FieldError(f"request lacks field {name!r}")
    if value is default and default is not ...:
        return value
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise FieldError(f"field {name!r} has the wrong type")
    return value
