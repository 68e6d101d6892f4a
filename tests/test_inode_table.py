"""InodeTable.maybe_forget: when the client may drop an inode the kernel forgot.

The write-back case is the one that lost changes: a callback of one MDT lock makes the
kernel forget the inode (its entry is invalidated), while the callback of the write-back
lock, which flushes what was changed under it, has not run yet.
"""

from __future__ import annotations

from mlustre.fuse_client.inodes import Inode, InodeTable
from mlustre.fuse_client.ldlm_client import ClientNamespace, LockState
from mlustre.fuse_client.page_cache import PageCache
from mlustre.protocol.ldlm import WB_BITS, LockType, Mode, inode_res

INO = 5


def table_with_lock() -> tuple[InodeTable, ClientNamespace, Inode, int]:
    ns = ClientNamespace("mlustre-MDT0000")
    table = InodeTable(PageCache(), ns)
    node = Inode(INO, {"size": 0, "mtime_ns": 1, "ctime_ns": 1, "mode": 0o100644})
    table.inodes[INO] = node
    lock = ns.new_lock(inode_res(INO), LockType.IBITS, Mode.PW, WB_BITS)
    ns.granted(lock.handle, 900, Mode.PW, WB_BITS, 0.0)
    node.md.append(lock)
    return table, ns, node, lock.handle


def test_a_granted_lock_keeps_the_inode():
    table, _, node, _ = table_with_lock()
    table.maybe_forget(node)
    assert table.get(INO) is node


def test_a_lock_called_back_keeps_the_inode_until_its_callback_ran():
    table, ns, node, handle = table_with_lock()
    ns.blocking_ast(900, 1.0)
    assert ns.lock(handle).state is LockState.CBPENDING
    table.maybe_forget(node)  # (the kernel forgot it: another lock's callback)
    assert table.get(INO) is node
    ns.start_cancel(handle)
    table.maybe_forget(node)
    assert table.get(INO) is node
    node.md.clear()  # (the callback ran: md_cache.blocking takes the lock out)
    table.maybe_forget(node)
    assert table.get(INO) is None


def test_pending_write_back_changes_keep_the_inode_without_a_lock():
    table, _, node, _ = table_with_lock()
    node.md.clear()

    class Pending:
        pending = {"mode": 0o600}

    node.wb = Pending()
    table.maybe_forget(node)
    assert table.get(INO) is node
    node.wb = None
    table.maybe_forget(node)
    assert table.get(INO) is None


def test_an_inode_in_use_is_kept_whatever_its_locks():
    table, _, node, _ = table_with_lock()
    node.md.clear()
    node.lookups = 1
    table.maybe_forget(node)
    assert table.get(INO) is node
