"""params.py - lctl-style parameter trees shared by servers and clients.

A ParamTree maps dotted names ("obdfilter.mlustre-OST0000.commit_interval") to a
getter and, for settable parameters, a parser/setter. Names are matched with
fnmatch globs. `handle` answers the OBD_ADMIN request body
({"op": "get"|"set"|"list", "pattern"|"name", "value"}) and raises ParamError
(errno + message) for bad requests: EINVAL for bad types or values, ENOENT when
nothing matches, EPERM when a read-only parameter is set. Values are plain
msgpack-able data (scalars, lists, str-keyed dicts); `format_param` renders them
as lctl does ("name=value", or "name=" followed by indented lines).
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any


class ParamError(Exception):
    def __init__(self, err: int, msg: str) -> None:
        self.errno = err
        super().__init__(msg)


@dataclass
class Param:
    name: str
    get: Callable[[], Any]
    set: Callable[[str], Any] | None = None  # parses and applies a value; ValueError if bad


class ParamTree:
    def __init__(self) -> None:
        self._params: dict[str, Param] = {}

    def add(self, name: str, get: Callable[[], Any],
            set: Callable[[str], Any] | None = None) -> None:  # noqa: A002
        self._params[name] = Param(name, get, set)

    def match(self, pattern: str) -> list[Param]:
        pattern = pattern.replace("/", ".")
        return [p for name, p in sorted(self._params.items()) if fnmatchcase(name, pattern)]

    def list(self, pattern: str) -> list[list[Any]]:
        return [[p.name, p.set is not None] for p in self.match(pattern)]

    def get(self, pattern: str) -> list[list[Any]]:
        found = self.match(pattern)
        if not found:
            raise ParamError(errno.ENOENT, f"{pattern}: no such parameter")
        return [[p.name, p.get()] for p in found]

    def set(self, pattern: str, value: str) -> list[list[Any]]:
        found = self.match(pattern)
        if not found:
            raise ParamError(errno.ENOENT, f"{pattern}: no such parameter")
        readonly = [p.name for p in found if p.set is None]
        if readonly:
            raise ParamError(errno.EPERM, f"{readonly[0]}: read-only parameter")
        out = []
        for p in found:
            assert p.set is not None
            try:
                p.set(value)
            except ValueError as e:
                raise ParamError(errno.EINVAL, f"{p.name}: {e}") from None
            out.append([p.name, p.get()])
        return out

    def handle(self, body: Any) -> dict[str, Any]:
        """Answer an OBD_ADMIN request body; ParamError on anything wrong."""
        if not isinstance(body, dict):
            raise ParamError(errno.EINVAL, "admin request body must be a map")
        op = body.get("op")
        if op not in ("get", "set", "list"):
            raise ParamError(errno.EINVAL, f"unknown admin op {op!r} (get, set, list)")
        key = "name" if op == "set" else "pattern"
        pattern = body.get(key)
        if not isinstance(pattern, str) or not pattern:
            raise ParamError(errno.EINVAL, f"admin {op} needs a non-empty string {key!r}")
        if op == "list":
            return {"params": self.list(pattern)}
        if op == "get":
            return {"params": self.get(pattern)}
        value = body.get("value")
        if not isinstance(value, str):
            raise ParamError(errno.EINVAL, "admin set needs a string 'value'")
        return {"params": self.set(pattern, value)}


# ---------------------------------------------------------------- value parsers

def parse_positive_float(text: str, *, limit: float = 86400.0) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value > limit:
        raise ValueError(f"must be a number greater than 0 and at most {limit:g}, not {text}")
    return value


def parse_positive_int(text: str, *, limit: int = 1 << 20) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if value <= 0 or value > limit:
        raise ValueError(f"must be between 1 and {limit}, not {value}")
    return value


# ---------------------------------------------------------------- output

def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        text = f"{v:.6f}".rstrip("0").rstrip(".")
        return text or "0"
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return "" if v is None else str(v)


def render(value: Any) -> list[str]:
    """A value as lines: a scalar is one line, a list one line per item, a dict
    "key: value" lines with nested values indented by four spaces."""
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, dict | list):
                lines.append(f"{k}:")
                lines += ["    " + line for line in render(v)]
            else:
                lines.append(f"{k}: {_scalar(v)}")
        return lines
    if isinstance(value, list):
        return [", ".join(map(_scalar, v)) if isinstance(v, list)
                else " ".join(render(v)) if isinstance(v, dict) else _scalar(v) for v in value]
    return [_scalar(value)]


def format_param(name: str, value: Any, *, values_only: bool = False) -> str:
    """One parameter as `lctl get_param` prints it (without the final newline)."""
    lines = render(value)
    if values_only:
        return "\n".join(lines)
    if len(lines) == 1 and not isinstance(value, list | dict):
        return f"{name}={lines[0]}"
    return f"{name}=" + "".join("\n" + line for line in lines)
