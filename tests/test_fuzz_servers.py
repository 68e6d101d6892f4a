"""A short fuzzing campaign (hypothesis) against real MGS, MDT and OST servers over TCP.

Each case is a hostile connection (mlustre/fuzz/: malformed, truncated,
oversized and type-confused frames, requests naming another client's locks, open
handles and xids); after each, a well-behaved client must still be served and the
data it wrote before must be intact. `scripts/fuzz` runs a long campaign.
"""

from __future__ import annotations

import errno
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from mlustre.fuzz.cases import hostile_cases
from mlustre.fuzz.cluster import TARGETS, FuzzCluster
from mlustre.fuzz.frames import HostileCase
from mlustre.protocol import constants as C
from mlustre.protocol.ldlm import LockType, Mode
from mlustre.protocol.message import Message

EXAMPLES = 150  # per target: a few seconds each on two slow cores


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzCluster]:
    logger = logging.getLogger("mlustre")
    old = logger.level
    logger.setLevel(logging.CRITICAL)  # hostile input is logged by design
    c = FuzzCluster(Path(tmp_path_factory.mktemp("fuzz")))
    c.start()
    try:
        yield c
    finally:
        c.stop()
        logger.setLevel(old)


def _campaign(cluster: FuzzCluster, kind: str) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(case=hostile_cases(kind))
    def one(case: HostileCase) -> None:
        cluster.hostile(kind, case)
        cluster.check()

    one()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", TARGETS)
def test_fuzz_server(cluster: FuzzCluster, kind: str) -> None:
    """Hostile cases against one server; after each, every server serves and keeps the
    good client's data, export, open handle and locks."""
    _campaign(cluster, kind)
    assert cluster.cases >= EXAMPLES


# -- valid but hostile sequences, each against the good client's state --

def _mdt_call(cluster: FuzzCluster, opc: int, body: dict, *, uuid: str = "hostile-seq",
              xid: int | None = None, flags: int = 0) -> Message:
    async def go() -> Message:
        s = await cluster.session("mdt", uuid)
        try:
            return await s.endpoint.call(opc, body, xid=xid, flags=flags, timeout=5)
        finally:
            await s.close()

    return cluster.run_in_loop(go)


def test_close_of_a_foreign_open_handle_is_refused(cluster: FuzzCluster) -> None:
    before = cluster.mdt.stats.get("close_foreign", 0)
    r = _mdt_call(cluster, C.MDS_CLOSE, {"handle": cluster.good.open_handle})
    assert r.status == errno.EBADF
    assert cluster.mdt.stats["close_foreign"] == before + 1
    cluster.check()  # the good client's handle is still open


def test_cancel_of_a_foreign_or_unknown_lock_changes_nothing(cluster: FuzzCluster) -> None:
    g = cluster.good
    before = cluster.mdt.stats.get("ldlm_cancel_foreign", 0)
    r = _mdt_call(cluster, C.LDLM_CANCEL, {"handles": [g.mdt_lock, 12345, 0]})
    assert r.status == 0
    assert cluster.mdt.stats["ldlm_cancel_foreign"] == before + 1
    assert cluster.mdt.ldlm.namespace.lock(g.mdt_lock) is not None
    cluster.check()


def test_resend_under_another_clients_xid_gets_no_saved_reply(cluster: FuzzCluster) -> None:
    """The good client's create (with its open handle) is kept under its uuid and xid; a
    resend of that xid by another client is a request of its own (here refused: the
    directory is not its), never the good client's saved reply."""
    g = cluster.good
    r = _mdt_call(cluster, C.MDS_REINT, {
        "op": C.REINT_CREATE, "cred": [4321, 4321, []], "parent": g.dir_ino, "name": b"data",
        "mode": stat.S_IFREG | 0o600, "open_flags": 2}, xid=g.xids[0], flags=C.MSG_RESENT)
    assert r.status == errno.EACCES
    assert "handle" not in r.body
    cluster.check()


def test_lock_limit_is_answered_enolck(cluster: FuzzCluster) -> None:
    ns = cluster.ost.ldlm

    async def go() -> list[int]:
        s = await cluster.session("ost", "hostile-locks")
        statuses = []
        try:
            for handle in range(1, 6):
                r = await s.endpoint.call(C.LDLM_ENQUEUE, {
                    "res": [9000 + handle, 0, 0, 0], "type": int(LockType.EXTENT),
                    "mode": int(Mode.PR), "policy": [0, 10], "handle": handle}, timeout=5)
                statuses.append(r.status)
            r = await s.endpoint.call(C.LDLM_ENQUEUE, {  # a resend of a held lock: fine
                "res": [9001, 0, 0, 0], "type": int(LockType.EXTENT), "mode": int(Mode.PR),
                "policy": [0, 10], "handle": 1}, timeout=5)
            statuses.append(r.status)
        finally:
            await s.close()
        return statuses

    old, ns.max_locks = ns.max_locks, 3
    try:
        before = cluster.ost.stats.get("ldlm_lock_limit", 0)
        assert cluster.run_in_loop(go) == [0, 0, 0, errno.ENOLCK, errno.ENOLCK, 0]
        assert cluster.ost.stats["ldlm_lock_limit"] == before + 2
    finally:
        ns.max_locks = old
    cluster.check()


@pytest.mark.parametrize("opc,body,code", [
    # ids past uid_t were accepted (and, in a create or setattr, stored as owners)
    (C.MDS_GETATTR_NAME, {"cred": [(1 << 64) - 1, 0, []], "parent": 1, "name": b"x"},
     errno.EINVAL),
    (C.MDS_GETATTR_NAME, {"cred": [5, 5, [1 << 40]], "parent": 1, "name": b"x"},
     errno.EINVAL),
    (C.MDS_GETXATTR, {"cred": [5, 5, []], "ino": 1, "name": b"user." + b"x" * 300},
     errno.ERANGE),
])
def test_out_of_range_ids_and_names_are_refused(cluster: FuzzCluster, opc: int, body: dict,
                                                code: int) -> None:
    assert _mdt_call(cluster, opc, body).status == code
