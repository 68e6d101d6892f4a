"""layout_xattr.py - the "lustre.lov" xattr: a file's layout or a directory's
default striping, as text users can read and write with getfattr/setfattr.

Format: "stripe_count=2 stripe_size=1048576 stripe_offset=-1" (any subset when
setting); a file's value also lists its objects as "objects=OST:OID,...".
"""

from __future__ import annotations

from typing import Any

LOV_XATTR = b"lustre.lov"
_KEYS = ("stripe_count", "stripe_size", "stripe_offset")


def format_layout(layout: dict[str, Any]) -> bytes:
    parts = [f"{k}={layout[k]}" for k in _KEYS if layout.get(k) is not None]
    if layout.get("objects"):
        parts.append("objects=" + ",".join(f"{o}:{i}" for o, i in layout["objects"]))
    return " ".join(parts).encode()


def parse_layout(value: bytes) -> dict[str, int]:
    """Parse the settable keys; ValueError on anything else."""
    layout: dict[str, int] = {}
    for item in value.decode(errors="replace").replace(",", " ").split():
        key, sep, num = item.partition("=")
        if not sep or key not in _KEYS:
            raise ValueError(f"bad layout item {item!r} (expected {', '.join(_KEYS)})")
        try:
            layout[key] = int(num, 0)
        except ValueError:
            raise ValueError(f"bad number in {item!r}") from None
    if not layout:
        raise ValueError("empty layout")
    return layout
