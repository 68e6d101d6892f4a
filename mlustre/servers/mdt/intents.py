"""intents.py - the locks an MDT reply grants with what it says (Lustre's intent locks).

A client asks inside a request for a PR IBITS lock on the inode the reply will describe
("lock": {"handle", "bits"[, "dir_bits"]}), on the directory an update changed
("parent_lock"), or on every entry of a readdir page and the directory itself
("locks"). The MDT grants them when that needs no waiting, and the client caches what
the reply says for as long as it holds them. Granting never waits and never awaits, so
the reply and its locks describe one instant of the namespace.

The SOM bit (size on the MDT, size_on_mdt.py) is granted only while the MDT's size is
the file's for this client; an open for write calls the other clients' SOM locks back.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from typing import Any

from ...protocol import constants as C
from ...protocol.ldlm import IBITS_FULL, WB_BITS, IBits, Mode, ResId, inode_res
from ..ldlm_service import U64, LdlmService
from ..target import Export
from .errors import MdtError
from .fields import _ino, _int, _name
from .handles import writes
from .store import MdtStore

SOM = int(IBits.SOM)
FULL = int(IBITS_FULL)
# A write-back lock: PW on a file's attributes (WB_BITS). Its holder changes mode, owner
# and times itself and tells the MDT later (fuse_client/md_writeback.py); whoever else
# reads or changes them first has the holder flush and give it back. (The MDT's IBITS
# locks are all PR but these.)


def _bits_ok(bits: Any) -> bool:
    return type(bits) is int and 0 < bits <= FULL and not bits & ~FULL


class IntentLocks:
    """Grants of intent locks for the MDT's replies.

    :store: the store now (None while stopped); :handles_of: the open handles of a client;
    :size_known: may sizes be handed out at all now (not before the open replays of the
    last run's clients are in).
    """

    def __init__(self, ldlm: LdlmService, store: Callable[[], MdtStore | None],
                 handles_of: Callable[[str], set[int] | frozenset[int]],
                 size_known: Callable[[], bool]) -> None:
        self.ldlm = ldlm
        self.store = store
        self.handles_of = handles_of
        self.size_known = size_known

    def _bits_for(self, export: Export, attr: dict[str, Any], bits: int) -> int:
        """`bits` without SOM unless this client may take attr's size from the MDT."""
        if bits & SOM and not self._size_ok(export, attr):
            bits &= ~SOM
        return bits

    def _size_ok(self, export: Export, attr: dict[str, Any]) -> bool:
        store = self.store()
        if not stat.S_ISREG(attr["mode"]) or store is None or not self.size_known():
            return False
        return store.size_grantable(attr["ino"], self.handles_of(export.uuid))

    def with_intent(self, export: Export, b: dict[str, Any], body: dict[str, Any]) -> Any:
        """Grant the lock a request asked for ("lock") on the inode its reply describes
        ("attr"); the reply then says its handle and bits."""
        want = b.get("lock")
        attr = body.get("attr")
        if type(want) is not dict or type(attr) is not dict:
            return body
        bits = want.get("bits")
        if stat.S_ISDIR(attr["mode"]) and "dir_bits" in want:
            bits = want["dir_bits"]  # a directory's name and its contents lock apart
        if not _bits_ok(bits):
            return body
        bits = self._bits_for(export, attr, bits)
        if not bits:  # (a client asking for the SOM bit alone)
            return body
        handle = self.ldlm.intent_lock(export, want.get("handle"), inode_res(attr["ino"]),
                                       bits)
        if handle is not None:
            body["lock"] = handle
            body["lock_bits"] = bits
        return body

    def with_writeback(self, export: Export, b: dict[str, Any], body: dict[str, Any],
                       root_ok: bool) -> dict[str, Any]:
        """A create may ask ("wb_lock": {"handle"}) for a write-back lock on the regular
        file it made: nobody else knows the file yet, so nobody waits. Not for a client
        whose root is squashed: it could not tell which of its changes the MDT would
        refuse (root's chown), and must not learn it after telling its application."""
        want = b.get("wb_lock")
        attr = body.get("attr")
        if (type(want) is not dict or type(attr) is not dict or body.get("created") is not True
                or not stat.S_ISREG(attr["mode"]) or not root_ok):
            return body
        handle = self.ldlm.intent_lock(export, want.get("handle"), inode_res(attr["ino"]),
                                       WB_BITS, Mode.PW)
        if handle is not None:
            body["wb_lock"] = handle
        return body

    def writeback_held(self, export: Export, inos: list[int]) -> list[tuple[ResId, int]]:
        """Other clients' write-back locks on `inos` (resource, bits): what describes or
        changes these inodes waits until their holders flushed and gave them back."""
        ns = self.ldlm.namespace
        return [(res, WB_BITS) for res in map(inode_res, inos)
                if ns.held_by_other(res, export.uuid, Mode.PW)]

    def holds_writeback(self, export: Export, handle: Any, ino: int) -> bool:
        """Does `export` hold write-back lock `handle` (its own handle) on `ino`?"""
        if type(handle) is not int:
            return False
        lk = self.ldlm.namespace.lock_by_owner(export.uuid, handle)
        return (lk is not None and lk.granted and lk.mode is Mode.PW
                and lk.res == inode_res(ino))

    def with_parent_intent(self, export: Export, b: dict[str, Any],
                           body: dict[str, Any]) -> dict[str, Any]:
        """An update in a directory may ask ("parent_lock": {"handle", "bits"}) for a
        lock on that directory again, with its new attributes: the update called back
        the client's own lock on it, and the kernel asks for them right after."""
        want = b.get("parent_lock")
        store = self.store()
        if type(want) is not dict or "parent" not in b or store is None:
            return body
        parent = _ino(b, "parent")  # (2.0 names it by FID, 1.8 by [ino, gen])
        bits = want.get("bits")
        if not _bits_ok(bits):
            return body
        try:
            attr = store.getattr(parent)
        except MdtError:
            return body
        handle = self.ldlm.intent_lock(export, want.get("handle"), inode_res(parent), bits)
        if handle is not None:
            body["parent_lock"] = handle
            body["parent_attr"] = attr
        return body

    def readdir_locks(self, export: Export, ino: int, body: dict[str, Any],
                      want: dict[str, Any]) -> None:
        """Readdir with the locks of its entries (Lustre's statahead in one request):
        "handle_base" the first of the client's handles, one per entry in order (or
        "handles", a list), "bits" for files and "dir_bits" for directories; each
        granted entry gets [.., handle, bits, has xattrs]. "dir_handle": the directory's
        own lock with "dir_lock_bits" and its attributes: the listing stays the
        directory's for as long as the client holds it (any change of its entries calls
        it back)."""
        store = self.store()
        if store is None:
            return
        handles: list[Any] | range | None = want.get("handles")
        base = want.get("handle_base")
        if type(base) is int and 0 < base < U64:
            handles = range(base, min(base + len(body["entries"]), U64))
        fbits, dbits = want.get("bits"), want.get("dir_bits")
        if type(handles) in (list, range):
            # Each granted entry also says whether it has any xattr (most have none: the
            # client then answers the kernel's getxattr calls itself).
            xattrs = store.with_xattrs([e[1]["ino"] for e in body["entries"]])
            for entry, handle in zip(body["entries"], handles, strict=False):
                attr = entry[1]
                bits = dbits if stat.S_ISDIR(attr["mode"]) else fbits
                if not _bits_ok(bits):
                    continue
                bits = self._bits_for(export, attr, bits)
                res = inode_res(attr["ino"])
                # (Not a second lock where the client holds one with these bits: a
                # directory listed again and again would pile them up.)
                got = self.ldlm.intent_lock(export, handle, res, bits) \
                    if bits and not self._holds(export, res, bits) else None
                if got is not None:
                    entry += [got, bits, attr["ino"] in xattrs]
        bits = want.get("dir_lock_bits")
        if _bits_ok(bits):
            got = self.ldlm.intent_lock(export, want.get("dir_handle"), inode_res(ino), bits)
            if got is not None:
                body["dir_lock"] = got
                body["dir_attr"] = store.getattr(ino)

    def _holds(self, export: Export, res: ResId, bits: int) -> bool:
        return any(lk.owner == export.uuid and int(lk.policy) & bits == bits  # type: ignore[call-overload]
                   for lk in self.ldlm.namespace.granted_locks(res))

    def size_callbacks(self, export: Export, opc: int,
                       b: dict[str, Any]) -> list[tuple[ResId, int]]:
        """An open for write calls back the other clients' SOM locks on the file: the
        size they take from the MDT stops being the file's once it writes."""
        store = self.store()
        if opc == C.REINT_OPEN:
            flags: int | None = _int(b, "flags", hi=(1 << 32) - 1)
            ino: int | None = _ino(b)
        elif opc == C.REINT_CREATE and store is not None:
            flags = _int(b, "open_flags", None, hi=(1 << 32) - 1)
            ino = store.child_ino(_ino(b, "parent"), _name(b))
        else:
            return []
        if ino is None or not writes(flags):
            return []
        res = inode_res(ino)
        if any(lk.owner != export.uuid and int(lk.policy) & SOM  # type: ignore[call-overload]
               for lk in self.ldlm.namespace.granted_locks(res)):
            return [(res, SOM)]
        return []
