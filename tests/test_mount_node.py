"""The composition root of a mount (fuse_client/node.py): what it hands to whom, built
from a configuration without connecting anything."""

from __future__ import annotations

from typing import Any

import trio

from mlustre.fuse_client.data_locks import OST_LRU_SIZE
from mlustre.fuse_client.md_cache import MD_LRU_SIZE
from mlustre.fuse_client.node import COUNTERS, Mount

CONFIG: dict[str, Any] = {"targets": [
    {"kind": "mdt", "name": "fs-MDT0000", "index": 0, "nids": ["127.0.0.1@tcp:1"]},
    {"kind": "ost", "name": "fs-OST0001", "index": 1, "nids": ["127.0.0.1@tcp:3"]},
    {"kind": "ost", "name": "fs-OST0000", "index": 0, "nids": ["127.0.0.1@tcp:2"]},
]}


def built() -> Mount:
    mount = Mount("127.0.0.1@tcp:9:/fs")
    mount.client.configure(CONFIG)
    mount._build()
    return mount


def test_every_target_gets_the_mounts_hooks() -> None:
    mount = built()
    client = mount.client
    assert client.mdc is not None and sorted(client.oscs) == [0, 1]
    md_locks = client.locks["fs-MDT0000"]
    assert mount.md.locks is md_locks and md_locks.ns.lru_size == MD_LRU_SIZE
    assert mount.data.ost_locks == {0: client.locks["fs-OST0000"],
                                    1: client.locks["fs-OST0001"]}
    for idx in (0, 1):
        assert mount.data.ost_locks[idx].ns.lru_size == OST_LRU_SIZE
    for barrier in client.barriers.values():
        assert barrier.drain is not None
    # Each import tells its target's link of its events; the MDT's link tells the
    # open-replay component of each connect, after the lock client and the barrier gate.
    for name, link in client.links.items():
        assert link.imp.events is link and link.imp is (
            client.mdc.imp if name == "fs-MDT0000" else client.oscs[link.osc.index].imp)
        assert link.locks is client.locks[name] and link.barrier is client.barriers[name]
    assert client.links["fs-MDT0000"].hooks.on_connected is not None
    assert client.links["fs-OST0000"].hooks.on_connected is None
    assert set(mount.counters) == set(COUNTERS)


def test_callbacks_reach_the_components() -> None:
    mount = built()
    client = mount.client
    seen: list[Any] = []

    async def md_blocking(lock: Any) -> None:
        seen.append(("md", lock))

    async def data_blocking(ost: int, lock: Any) -> None:
        seen.append(("data", ost, lock))

    # (Monkeypatched on the components only to observe the forwarding.)
    mount.md.blocking = md_blocking  # type: ignore[method-assign]
    mount.data.blocking = data_blocking  # type: ignore[method-assign]
    mount.data.glimpse = lambda ost, lock: {"size": ost, "mtime_ns": 0}  # type: ignore
    mount.io.md_lock_gone = lambda lock: seen.append(("io", lock))  # type: ignore

    async def main() -> None:
        await client.locks["fs-MDT0000"].on_blocking("m")  # type: ignore[arg-type]
        await client.locks["fs-OST0001"].on_blocking("o")  # type: ignore[arg-type]

    trio.run(main)
    # (An MDT lock going also closes the opens it kept: open_cache.py.)
    assert seen == [("md", "m"), ("io", "m"), ("data", 1, "o")]
    assert client.locks["fs-OST0000"].on_glimpse("g") == {  # type: ignore[arg-type]
        "size": 0, "mtime_ns": 0}


def test_identity_and_memory_come_from_the_mount() -> None:
    mount = built()
    mdc = mount.client.mdc
    assert mdc is not None
    assert mdc.identity(5) == (None, None)
    mount.inodes.update({"ino": 5, "gen": 7, "fid": [1, 2, 0], "size": 0, "mtime_ns": 0,
                         "ctime_ns": 0, "mode": 0o100644})
    assert mdc.identity(5) == (7, [1, 2, 0])
    mount.client.oscs[0].unstable_bytes = 4096
    assert mount.cache.held_elsewhere() == 4096


def test_an_mdt_reply_older_than_our_size_report_does_not_undo_it() -> None:
    """A getattr sent before our size update ran at the MDT may be answered after the
    update completed: its size (the MDT's before the update) must replace neither the
    inode's size nor the size its attributes give whoever reads the MDT's from them
    (refresh_size). Seen after an MDT crash: an open-unlinked file's size update, queued
    while the MDT was down, raced a getattr and the file read back empty."""
    mount = built()
    attr = {"ino": 9, "gen": 1, "fid": [1, 9, 0], "size": 0, "mtime_ns": 10,
            "ctime_ns": 10, "mode": 0o100644}
    node = mount.inodes.update(attr)
    node.size, node.mtime_ns = 10, 50  # written here, then reported at t = 2.0:
    node.reported_at = 2.0
    mount.inodes.update({**attr, "ctime_ns": 60}, sent_at=1.5)  # asked at 1.5
    assert (node.size, node.mtime_ns, node.ctime_ns) == (10, 50, 60)
    assert (node.attr["size"], node.attr["mtime_ns"]) == (10, 50)
    mount.inodes.update({**attr, "size": 3, "mtime_ns": 70, "ctime_ns": 70}, sent_at=2.5)
    assert (node.size, node.mtime_ns, node.attr["size"]) == (3, 70, 3)  # newer: taken
