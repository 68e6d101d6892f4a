"""nid.py - network ids ("host:port") and mount specs ("nid[,nid...]:/fsname")."""

from __future__ import annotations

from typing import NamedTuple


class Nid(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Nid:
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not a NID (HOST:PORT): {text!r}")
        return cls(host, int(port))


def parse_spec(spec: str) -> tuple[list[Nid], str]:
    """Split "h1:p1[,h2:p2]:/fsname" into the MGS NIDs and the fsname."""
    nids, sep, fsname = spec.rpartition(":/")
    if not sep or not fsname or "/" in fsname:
        raise ValueError(f"not a mount spec (MGSNID[,MGSNID]:/FSNAME): {spec!r}")
    return [Nid.parse(n) for n in nids.split(",")], fsname


def format_spec(nids: list[Nid], fsname: str) -> str:
    return ",".join(str(n) for n in nids) + ":/" + fsname
