"""namespace.py - names: lookups, directory listings, paths, and the updates that add or
remove a name (create, mkdir, symlink, link, unlink, rmdir; rename is in rename.py).

Permission checks follow Linux's order (search, then existence, then write, then the
sticky rule), so that each failure gives the errno a local filesystem would.
"""

from __future__ import annotations

import errno
import os
import stat

from .db import MdtDb
from .errors import fail
from .handles import OpenHandles
from .inodes import Inodes
from .layouts import Layouts
from .permissions import Cred, check_sticky, perm_ok
from .replayed import ReplayedUpdate
from .schema import ICOLS, INO, MODE, NAME_MAX, NLINK, PARENT, ROOT_INO, Row, attr_of

SYMLINK_MAX = 4095


def check_name(name: bytes) -> bytes:
    """Reject names a directory entry can never have (checked before any lookup)."""
    if not isinstance(name, bytes):
        name = os.fsencode(name) if isinstance(name, str) else bytes(name)
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise fail(errno.EINVAL, f"invalid name {name!r}")
    if len(name) > NAME_MAX:
        raise fail(errno.ENAMETOOLONG)
    return name


class Namespace:
    """Directory entries and what adding or removing one does to inodes."""

    def __init__(self, db: MdtDb, inodes: Inodes, handles: OpenHandles,
                 layouts: Layouts) -> None:
        self._conn = db.conn
        self._inodes = inodes
        self._handles = handles
        self._layouts = layouts

    def dir(self, cred: Cred, ino: int, mask: int) -> Row:
        """Fetch a directory the caller uses, checking type and permission."""
        r = self._inodes.row(ino)
        if not stat.S_ISDIR(r[MODE]):
            raise fail(errno.ENOTDIR)
        if not perm_ok(cred, r, mask):
            raise fail(errno.EACCES)
        return r

    # ------------------------------------------------------------------ reads

    def lookup(self, cred: Cred, parent: int, name: bytes) -> dict:
        """Attributes of `name` in directory `parent` (needs search permission).

        "." and ".." resolve (the parent column is "..") so NFS-style lookups work.
        """
        d = self.dir(cred, parent, os.X_OK)
        if name == b".":
            return attr_of(d)
        if name == b"..":
            return attr_of(self._inodes.row(d[PARENT] or ROOT_INO))
        name = check_name(name)
        r = self._inodes.entry(parent, name)
        if r is None:
            raise fail(errno.ENOENT)
        return attr_of(r)

    def child_ino(self, parent: int, name: bytes) -> int | None:
        """The inode `name` in `parent` names, without permission checks (the MDT
        locks it before an update; the update itself checks permissions)."""
        r = self._conn.execute("SELECT ino FROM dirents WHERE parent = ? AND name = ?",
                               (parent, name)).fetchone()
        return None if r is None else int(r[0])

    def readlink(self, ino: int) -> bytes:
        """Target of a symlink (EINVAL for anything else)."""
        r = self._conn.execute("SELECT mode, target FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if r is None:
            raise fail(errno.ENOENT)
        if not stat.S_ISLNK(r[0]):
            raise fail(errno.EINVAL, "not a symlink")
        return bytes(r[1])

    def readdir(
        self, cred: Cred, ino: int, cookie: int, count: int
    ) -> list[tuple[bytes, dict, int]]:
        """Up to `count` entries after `cookie`, in dirent-id order so cookies stay valid."""
        self.dir(cred, ino, os.R_OK)
        if count <= 0:
            return []
        rows = self._conn.execute(
            f"SELECT {ICOLS}, d.id, d.name FROM dirents d JOIN inodes i ON i.ino = d.ino"
            " WHERE d.parent = ? AND d.id > ? ORDER BY d.id LIMIT ?",
            (ino, cookie, count),
        ).fetchall()
        return [(bytes(r[-1]), attr_of(r), r[-2]) for r in rows]

    def path_of(self, ino: int) -> bytes:
        """One path of ino relative to the root, without a leading "/" (b"" for the root).

        Walks directory entries up to the root; for a hard-linked file the oldest link
        is taken. ENOENT for an unknown inode or one no directory names (an orphan).
        """
        r = self._inodes.row(ino)
        if ino == ROOT_INO:
            return b""
        if r[NLINK] == 0:
            raise fail(errno.ENOENT, f"inode {ino} is not linked in the namespace")
        parts: list[bytes] = []
        if stat.S_ISDIR(r[MODE]):
            parent = r[PARENT]
        else:  # dirents_ino makes this an index lookup
            e = self._conn.execute(
                "SELECT parent, name FROM dirents WHERE ino = ? ORDER BY id LIMIT 1", (ino,)
            ).fetchone()
            if e is None:
                raise fail(errno.ENOENT, f"inode {ino} is not linked in the namespace")
            parent = e[0]
            parts.append(bytes(e[1]))
            ino = parent
            parent = None
        while ino != ROOT_INO:
            if parent is None:
                p = self._conn.execute("SELECT parent FROM inodes WHERE ino = ?", (ino,)).fetchone()
                parent = p[0] if p else 0
            # A directory has one entry, found through its parent's (parent, name) index.
            e = self._conn.execute(
                "SELECT name FROM dirents WHERE parent = ? AND ino = ? LIMIT 1", (parent, ino)
            ).fetchone() if parent else None
            if e is None:
                raise fail(errno.ENOENT, f"inode {ino} is not linked in the namespace")
            parts.append(bytes(e[0]))
            ino, parent = parent, None
            if len(parts) > 100_000:  # a loop would be corruption; don't hang the server
                raise fail(errno.ELOOP, "directory parent chain loops")
        return b"/".join(reversed(parts))

    def is_ancestor(self, ancestor: int, ino: int) -> bool:
        """True if `ancestor` is ino or one of ino's parent directories."""
        seen = 0
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            r = self._conn.execute("SELECT parent FROM inodes WHERE ino = ?", (ino,)).fetchone()
            if r is None or not r[0]:
                return False
            ino = r[0]
            seen += 1
            if seen > 1_000_000:  # a loop would be corruption; don't hang the server
                raise fail(errno.ELOOP, "directory parent chain loops")

    # ------------------------------------------------------------------ adding names

    def _prepare_create(
        self, cred: Cred, parent: int, name: bytes
    ) -> tuple[Row, bytes, Row | None]:
        """Common start of create/mkdir/symlink/link: Linux order is X, then EEXIST, then W."""
        name = check_name(name)
        d = self.dir(cred, parent, os.X_OK)
        if d[NLINK] == 0:
            raise fail(errno.ENOENT, "directory was removed")
        return d, name, self._inodes.entry(parent, name)

    def create(
        self,
        cred: Cred,
        parent: int,
        name: bytes,
        mode: int,
        rdev: int,
        open_flags: int | None,
        exclusive: bool,
        layout: dict | None,
        now: int,
        replayed: ReplayedUpdate | None,
    ) -> dict:
        """mknod/creat of any non-directory type; optionally open the result.

        Returns {"attr", "handle", "created"}.  With exclusive=False an existing regular
        file is opened instead (O_CREAT without O_EXCL).  A replayed create gets its
        first inode number, generation and objects back.
        """
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt == stat.S_IFDIR:
            raise fail(errno.EPERM, "use mkdir for directories")
        if fmt not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise fail(errno.EINVAL, "bad file type")
        explicit = self._layouts.check(layout)
        d, name, existing = self._prepare_create(cred, parent, name)
        if existing is not None:
            if exclusive:
                raise fail(errno.EEXIST)
            if stat.S_ISDIR(existing[MODE]):
                raise fail(errno.EISDIR)
            if not stat.S_ISREG(existing[MODE]):
                raise fail(errno.EEXIST)
            if open_flags is None:
                return {"attr": attr_of(existing), "handle": None, "created": False}
            res = self._handles.open(cred, existing[INO], open_flags, False, now)
            return {"attr": res["attr"], "handle": res["handle"], "created": False}
        if not perm_ok(cred, d, os.W_OK | os.X_OK):
            raise fail(errno.EACCES)
        if fmt in (stat.S_IFCHR, stat.S_IFBLK) and cred.uid != 0:
            raise fail(errno.EPERM, "only root makes device nodes")
        new_layout = None
        if fmt == stat.S_IFREG:
            new_layout = (replayed.layout() if replayed is not None else None) or \
                self._layouts.new_layout(self._layouts.settings_for(d, explicit), 1)
        r = self._inodes.insert(
            cred,
            d,
            fmt | (mode & 0o7777),
            nlink=1,
            now=now,
            rdev=rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0,
            layout=new_layout,
            replayed=replayed,
        )
        self._inodes.add_entry(parent, name, r[INO])
        self._inodes.touch_dir(parent, now)
        handle = None
        if open_flags is not None:
            # The creator may open what it just made whatever the mode (Linux skips the check).
            handle = self._handles.new(r[INO], open_flags)
        return {"attr": attr_of(r), "handle": handle, "created": True}

    def mkdir(self, cred: Cred, parent: int, name: bytes, mode: int, now: int,
              replayed: ReplayedUpdate | None) -> dict:
        """Make a directory; returns its attr.  Parent nlink grows by one."""
        d, name, existing = self._prepare_create(cred, parent, name)
        if existing is not None:
            raise fail(errno.EEXIST)
        if not perm_ok(cred, d, os.W_OK | os.X_OK):
            raise fail(errno.EACCES)
        # Linux vfs_mkdir keeps only rwx and sticky from the caller's mode.
        r = self._inodes.insert(cred, d, stat.S_IFDIR | (mode & 0o1777), nlink=2, now=now,
                                size=4096, replayed=replayed)
        self._inodes.add_entry(parent, name, r[INO])
        self._inodes.touch_dir(parent, now, 1)
        return attr_of(r)

    def symlink(self, cred: Cred, parent: int, name: bytes, target: bytes, now: int,
                replayed: ReplayedUpdate | None) -> dict:
        """Make a symlink (mode 0o120777, size = len(target)); returns its attr."""
        target = bytes(target)
        if not target:
            raise fail(errno.ENOENT, "empty symlink target")
        if len(target) > SYMLINK_MAX:
            raise fail(errno.ENAMETOOLONG)
        d, name, existing = self._prepare_create(cred, parent, name)
        if existing is not None:
            raise fail(errno.EEXIST)
        if not perm_ok(cred, d, os.W_OK | os.X_OK):
            raise fail(errno.EACCES)
        r = self._inodes.insert(cred, d, stat.S_IFLNK | 0o777, nlink=1, now=now,
                                size=len(target), target=target, replayed=replayed)
        self._inodes.add_entry(parent, name, r[INO])
        self._inodes.touch_dir(parent, now)
        return attr_of(r)

    def link(self, cred: Cred, ino: int, new_parent: int, new_name: bytes, now: int) -> dict:
        """Add a hard link; returns the inode's attr (EPERM for directories)."""
        r = self._inodes.row(ino)
        if stat.S_ISDIR(r[MODE]):
            raise fail(errno.EPERM, "hard link to a directory")
        d, new_name, existing = self._prepare_create(cred, new_parent, new_name)
        if existing is not None:
            raise fail(errno.EEXIST)
        if not perm_ok(cred, d, os.W_OK | os.X_OK):
            raise fail(errno.EACCES)
        if r[NLINK] == 0:
            raise fail(errno.ENOENT, "inode was unlinked")
        self._inodes.add_entry(new_parent, new_name, ino)
        self._conn.execute(
            "UPDATE inodes SET nlink = nlink + 1, ctime_ns = ? WHERE ino = ?", (now, ino)
        )
        self._inodes.touch_dir(new_parent, now)
        return attr_of(self._inodes.row(ino))

    # ------------------------------------------------------------------ removing names

    def _prepare_remove(self, cred: Cred, parent: int, name: bytes) -> tuple[Row, Row]:
        """Common start of unlink/rmdir: X, lookup, W, then the sticky rule."""
        name = check_name(name)
        d = self.dir(cred, parent, os.X_OK)
        r = self._inodes.entry(parent, name)
        if r is None:
            raise fail(errno.ENOENT)
        if not perm_ok(cred, d, os.W_OK | os.X_OK):
            raise fail(errno.EACCES)
        check_sticky(cred, d, r)
        return d, r

    def unlink(self, cred: Cred, parent: int, name: bytes, now: int) -> dict:
        """Remove a non-directory name; returns {"ino"}.  Open files become orphans."""
        _d, r = self._prepare_remove(cred, parent, name)
        if stat.S_ISDIR(r[MODE]):
            raise fail(errno.EISDIR)
        self._inodes.remove_entry(r[-1])
        self._handles.drop_link(r, now)
        self._inodes.touch_dir(parent, now)
        return {"ino": r[INO]}

    def rmdir(self, cred: Cred, parent: int, name: bytes, now: int) -> dict:
        """Remove an empty directory; returns {"ino"}."""
        if name == b".":
            raise fail(errno.EINVAL, "rmdir of '.'")
        if name == b"..":
            raise fail(errno.ENOTEMPTY, "rmdir of '..'")
        _d, r = self._prepare_remove(cred, parent, name)
        if not stat.S_ISDIR(r[MODE]):
            raise fail(errno.ENOTDIR)
        if r[INO] == ROOT_INO:
            raise fail(errno.EBUSY, "rmdir of the root")
        if self._inodes.has_entries(r[INO]):
            raise fail(errno.ENOTEMPTY)
        self._inodes.remove_entry(r[-1])
        self._handles.drop_link(r, now)
        self._inodes.touch_dir(parent, now, -1)
        return {"ino": r[INO]}
