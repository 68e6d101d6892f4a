"""squash.py - root squash on the MDT (Lustre's mdt.*.root_squash / nosquash_nids).

A request whose credentials say uid 0 is served as the configured squash uid:gid,
without supplementary groups, unless it comes from a NID of the exception list. The
squash uid:gid 0:0 (the default) means no squashing, as in Lustre.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_squash(text: str) -> tuple[int, int]:
    """"UID:GID" -> (uid, gid); ValueError with a clear message otherwise."""
    uid_s, sep, gid_s = text.strip().partition(":")
    try:
        uid, gid = int(uid_s), int(gid_s)
    except ValueError:
        raise ValueError(f"root squash is UID:GID (e.g. 65534:65534), not {text!r}") from None
    if not sep or not (0 <= uid < 1 << 32 and 0 <= gid < 1 << 32):
        raise ValueError(f"root squash is UID:GID with ids below 2^32, not {text!r}")
    return uid, gid


def parse_nids(text: str) -> list[IpNet]:
    """Comma- or space-separated addresses or networks ("127.0.0.1,10.0.0.0/8"; an
    optional "@tcp" suffix as Lustre writes NIDs); "" or "NONE" for none."""
    out: list[IpNet] = []
    for item in text.replace(",", " ").split():
        if item.upper() == "NONE":
            continue
        try:
            out.append(ipaddress.ip_network(item.removesuffix("@tcp"), strict=False))
        except ValueError:
            raise ValueError(f"not an address or network: {item!r}") from None
    return out


@dataclass
class RootSquash:
    uid: int = 0
    gid: int = 0
    nosquash: list[IpNet] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return (self.uid, self.gid) != (0, 0)

    def exempt(self, peer: str) -> bool:
        """Is the peer ("HOST:PORT") on the exception list?"""
        host = peer.rsplit(":", 1)[0].strip("[]")
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.nosquash)

    def apply(self, cred: Any, peer: str) -> Any:
        """The credentials to serve a request with (a wire cred [uid, gid, groups])."""
        if (self.enabled and isinstance(cred, list) and cred and cred[0] == 0
                and not self.exempt(peer)):
            return [self.uid, self.gid, []]
        return cred

    def to_dict(self) -> dict[str, Any]:
        return {"root_squash": f"{self.uid}:{self.gid}",
                "nosquash_nids": " ".join(str(n) for n in self.nosquash)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RootSquash:
        uid, gid = parse_squash(str(d.get("root_squash", "0:0")))
        return cls(uid, gid, parse_nids(str(d.get("nosquash_nids", ""))))
