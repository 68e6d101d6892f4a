"""admin.py - a client process's lctl parameters and the Unix socket serving them.

Names follow Lustre's, with the client's short id where Lustre has the superblock
address: mdc.FSNAME-MDT0000-mdc-ID.import, osc.FSNAME-OST0000-osc-ID.max_dirty_mb,
llite.FSNAME-ID.max_cached_mb. llite.*.stats counts the FUSE requests served (by
type, with the bytes read and written) beside the mount's own counters; mdc.*.stats
and osc.*.stats the requests sent to each target, per opcode (req.MDS_GETATTR, ...). The socket (STATE/clients/PID.sock, mode 0600)
speaks the RPC framing: OBD_ADMIN requests with the ParamTree body, no CONNECT.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import trio

from .. import registry
from ..params import ParamError, ParamTree, parse_positive_float, parse_positive_int
from ..protocol import constants as C
from ..protocol.message import Message
from ..protocol.rpc import Endpoint
from .boundary import BYTES_MOVED, OpStats
from .imports import Import
from .ldlm import LockClient
from .node import Mount

log = logging.getLogger(__name__)


def import_info(imp: Import) -> dict[str, Any]:
    nid = imp.nids[imp._nid_idx % len(imp.nids)] if imp.nids else ""
    return {"name": imp.target, "target": f"{imp.target}_UUID", "state": imp.state.value,
            "current_connection": str(nid),
            "failover_nids": [str(n) for n in imp.nids],
            "connect_flags": imp.flags, "instance": imp.server.get("instance", 0),
            "conn_cnt": imp.conn_cnt, "peer_committed": imp.peer_committed,
            "resent_updates": imp.resent_updates, "last_error": imp.last_error,
            "state_history": [[int(t), s] for t, s in imp.history]}


def dirty_bytes_per_ost(ops: Mount) -> dict[int, int]:
    """Dirty (not yet sent) bytes of the page cache, by the OST they go to."""
    from .page_cache import CHUNK

    out: dict[int, int] = {}
    for ino, fc in list(ops.cache.files.items()):
        layout = ops.inodes.layout_of(ino) if fc.dirty else None
        if layout is None:
            continue
        for idx in list(fc.dirty):
            chunk = fc.chunks.get(idx)
            if chunk is None or not chunk.dirty:
                continue
            for seg in layout.map_extent(idx * CHUNK + chunk.dirty_lo,
                                         chunk.dirty_hi - chunk.dirty_lo):
                out[seg.ost_idx] = out.get(seg.ost_idx, 0) + seg.length
    return out


def client_params(ops: Mount) -> ParamTree:
    node = ops.client
    cid = registry.client_instance_id(node.uuid)
    cache = ops.cache
    tree = ParamTree()

    def set_max_dirty(text: str) -> None:
        cache.max_dirty = parse_positive_int(text, limit=1 << 20) << 20
        ops.writeback.queue_all()
        ops.writeback._notify()  # wake writers waiting for dirty space

    def set_max_cached(text: str) -> None:
        cache.max_cached = parse_positive_int(text, limit=1 << 22) << 20
        cache.evict()

    assert node.mdc is not None
    mdc = f"mdc.{node.mdc.imp.target}-mdc-{cid}."
    tree.add(mdc + "import", lambda: import_info(node.mdc.imp))  # type: ignore[union-attr]
    tree.add(mdc + "barrier", node.barriers[node.mdc.imp.target].params)
    tree.add(mdc + "stats", lambda: rpc_stat_lines(node.mdc.imp))  # type: ignore[union-attr]
    for idx, osc in node.oscs.items():
        base = f"osc.{osc.imp.target}-osc-{cid}."
        tree.add(base + "import", lambda o=osc: import_info(o.imp))
        tree.add(base + "barrier", node.barriers[osc.imp.target].params)
        tree.add(base + "stats", lambda o=osc: rpc_stat_lines(o.imp))
        tree.add(base + "cur_dirty_bytes", lambda i=idx: dirty_bytes_per_ost(ops).get(i, 0))
        tree.add(base + "max_dirty_mb", lambda: cache.max_dirty >> 20, set_max_dirty)
        tree.add(base + "write_bytes", lambda o=osc: o.write_bytes)
        tree.add(base + "read_bytes", lambda o=osc: o.read_bytes)
        tree.add(base + "unstable_bytes", lambda o=osc: o.unstable_bytes)
        tree.add(base + "unstable_syncs", lambda o=osc: o.unstable_syncs)
        tree.add(base + "replayed", lambda o=osc: o.replayed)
    ll = f"llite.{node.fsname}-{cid}."
    tree.add(ll + "uuid", lambda: node.uuid)
    tree.add(ll + "max_cached_mb", lambda: cache.max_cached >> 20, set_max_cached)
    tree.add(ll + "max_dirty_mb", lambda: cache.max_dirty >> 20, set_max_dirty)

    def set_flush_interval(text: str) -> None:
        ops.io.flush_interval = parse_positive_float(text, limit=3600.0)

    # Seconds between periodic write-backs: dirty data is older than this at most.
    tree.add(ll + "flush_interval", lambda: ops.io.flush_interval, set_flush_interval)

    def set_attr_writeback(text: str) -> None:
        if text.strip() not in ("0", "1"):
            raise ParamError(errno.EINVAL, "attr_writeback is 0 or 1")
        ops.wb.enabled = text.strip() == "1"

    def set_attr_writeback_age(text: str) -> None:
        ops.wb.age = parse_positive_float(text, limit=60.0)

    # Attribute write-back of the files this client creates (md_writeback.py): on or
    # off for new files, and how long a change waits here at most.
    tree.add(ll + "attr_writeback", lambda: int(ops.wb.enabled), set_attr_writeback)
    tree.add(ll + "attr_writeback_age", lambda: ops.wb.age, set_attr_writeback_age)
    tree.add(ll + "cached_bytes", lambda: cache.cached_bytes)
    tree.add(ll + "dirty_bytes", lambda: cache.dirty_bytes)
    tree.add(ll + "inodes", lambda: len(ops.inodes))
    tree.add(ll + "open_files", lambda: len(ops.handles.files()))
    tree.add(ll + "stats", lambda: llite_stat_lines(ops.counters, ops.ops.op_stats))
    for lc in node.locks.values():
        kind = "mdc" if lc is ops.md.locks else "osc"
        add_lock_params(tree, f"ldlm.namespaces.{lc.target}-{kind}-{cid}.", lc)
    return tree


def _stat_lines(counters: dict[str, int]) -> list[str]:
    return [f"{k:<25} {v} samples [events]" for k, v in sorted(counters.items())]


def llite_stat_lines(counters: dict[str, int], op_stats: OpStats) -> list[str]:
    """llite.*.stats: the mount's counters ([events]) and the FUSE requests it served
    ([reqs]; read_bytes and write_bytes as Lustre prints them: samples [bytes] min max
    sum), in one list sorted by name."""
    lines = {k: f"{k:<25} {v} samples [events]" for k, v in counters.items()}
    for k, v in op_stats.calls.items():
        if k in BYTES_MOVED:
            lo, hi, total = op_stats.moved.get(k, [0, 0, 0])
            lines[k] = f"{k:<25} {v} samples [bytes] {lo} {hi} {total}"
        else:
            lines[k] = f"{k:<25} {v} samples [reqs]"
    return [lines[k] for k in sorted(lines)]


def rpc_stat_lines(imp: Import) -> list[str]:
    """mdc/osc.*.stats: requests sent to the target, per opcode, named as the servers'
    mdt/obdfilter.*.stats name what they received (req.MDS_GETATTR). Import.call counts
    them (resends too); the connects and the idle pings, sent past call(), come from
    their own counters; recovery's replays are not counted."""
    sent = dict(imp.sent)
    for opc, n in ((imp.connect_opc, imp.conn_cnt), (C.OBD_PING, imp.pings)):
        if n:
            sent[opc] = sent.get(opc, 0) + n
    named = {f"req.{C.OPCODE_NAMES.get(opc, opc)}": n for opc, n in sent.items()}
    return [f"{k:<25} {v} samples [reqs]" for k, v in sorted(named.items())]


def add_lock_params(tree: ParamTree, ns: str, lc: LockClient) -> None:
    """Lustre's ldlm.namespaces.*: lock counts, the LRU's limits, callback counters."""

    def set_lru_size(text: str) -> None:
        if text.strip() == "clear":  # as Lustre's lru_size=clear: drop every unused lock
            lc._spawn(lc.cancel_unused)
            return
        lc.ns.lru_size = parse_positive_int(text, limit=1 << 24)

    def set_lru_max_age(text: str) -> None:
        lc.ns.lru_max_age = parse_positive_float(text, limit=86400.0 * 30)

    tree.add(ns + "lock_count", lambda: lc.ns.lock_count)
    tree.add(ns + "lock_unused_count", lambda: lc.ns.lru_count)
    tree.add(ns + "lru_size", lambda: lc.ns.lru_size, set_lru_size)
    tree.add(ns + "lru_max_age", lambda: lc.ns.lru_max_age, set_lru_max_age)
    tree.add(ns + "stats", lambda: _stat_lines(lc.stats))
    tree.add(ns + "locks", lambda: [
        f"{lk.handle} remote {lk.remote_handle:#x} res {list(lk.res)} {lk.type.name} "
        f"{lk.mode.name} {lk.policy!s} {lk.state.value} users {lk.readers}r/{lk.writers}w"
        if lk.remote_handle is not None else
        f"{lk.handle} res {list(lk.res)} {lk.type.name} {lk.mode.name} {lk.state.value}"
        for lk in lc.ns.all_locks()])


def socket_path(state_dir: Path, pid: int) -> Path:
    return state_dir / "clients" / f"{pid}.sock"


async def open_admin_socket(path: Path) -> trio.SocketListener:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return trio.SocketListener(sock)


async def serve_admin(listener: trio.SocketListener, tree: ParamTree) -> None:
    async def handle(endpoint: Endpoint, req: Message) -> Message:
        if req.opc != C.OBD_ADMIN:
            return req.reply({"error": f"opcode {req.opc} not served"}, status=errno.EOPNOTSUPP)
        try:
            return req.reply(tree.handle(req.body))
        except ParamError as e:
            return req.reply({"error": str(e)}, status=e.errno)

    async def connection(stream: trio.SocketStream) -> None:
        endpoint = Endpoint(stream, handler=handle, name="lctl")
        try:
            await endpoint.serve()
        except Exception:
            log.exception("lctl connection failed")

    await trio.serve_listeners(connection, [listener])
