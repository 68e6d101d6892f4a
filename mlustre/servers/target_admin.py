"""target_admin.py - a target's lctl surface (OBD_ADMIN): its parameters
(FSNAME-OST0000.commit_interval, ldlm.namespaces.*, fail_loc, ...) and the barrier
operations (barrier_freeze / barrier_thaw / barrier_stat).

Split out of target.py, which builds the tree once (`TargetServer.params`) and routes
OBD_ADMIN here; the MDT and OSTs add their own parameters to the same tree.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Protocol

from ..params import ParamError, ParamTree, parse_positive_float, parse_positive_int
from ..protocol.ldlm import LockType
from . import fail_loc
from .barrier import DEFAULT_FREEZE_TIMEOUT, ServerBarrier
from .errors import ServiceError
from .export import Export, Stats
from .fail_loc import FailLoc
from .ldlm_service import LdlmService
from .limits import ConnectionLimit, Misbehaviour
from .recovery_window import RecoveryWindow
from .storage import TargetStorage

log = logging.getLogger(__name__)


class AdminTarget(Protocol):
    """What lctl may read and change of a target (TargetServer): this module does not
    import target.py, which imports it."""

    commit_interval: float
    fail: FailLoc | None

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def storage(self) -> TargetStorage: ...

    @property
    def last_transno(self) -> int: ...

    @property
    def last_committed(self) -> int: ...

    @property
    def exports(self) -> Mapping[str, Export]: ...

    @property
    def connections(self) -> ConnectionLimit: ...

    @property
    def misbehaviour(self) -> Misbehaviour: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def lock_types(self) -> frozenset[LockType]: ...

    @property
    def ldlm(self) -> LdlmService: ...

    @property
    def ldlm_timeout(self) -> float: ...

    @property
    def barrier(self) -> ServerBarrier | None: ...

    @property
    def recovery(self) -> RecoveryWindow | None: ...

    def params(self) -> ParamTree: ...

    def want_commit(self) -> None: ...

# The lctl prefix of each kind of target.
PARAM_PREFIX = {"mgs": "mgs", "mdt": "mdt", "ost": "obdfilter"}


def build_params(t: AdminTarget) -> ParamTree:
    """The parameters every target has, e.g. obdfilter.FSNAME-OST0000.commit_interval."""
    tree = ParamTree()
    base = f"{PARAM_PREFIX.get(t.kind, t.kind)}.{t.name}."
    tree.add(base + "uuid", lambda: f"{t.name}_UUID")
    tree.add(base + "instance", lambda: t.storage.instance)
    tree.add(base + "last_transno", lambda: t.last_transno)
    tree.add(base + "last_committed", lambda: t.last_committed)
    tree.add(base + "commit_interval", lambda: t.commit_interval,
             lambda text: _set_commit_interval(t, text))
    tree.add(base + "num_exports", lambda: len(t.exports))
    tree.add(base + "num_connections", lambda: t.connections.current)
    tree.add(base + "max_connections", lambda: t.connections.limit,
             lambda text: _set_max_connections(t, text))
    tree.add(base + "evict_threshold", lambda: t.misbehaviour.threshold,
             lambda text: _set_evict_threshold(t, text))
    tree.add(base + "evict_window", lambda: t.misbehaviour.window,
             lambda text: _set_evict_window(t, text))
    tree.add(base + "exports", lambda: sorted(t.exports))
    tree.add(base + "stats", lambda: stats_lines(t.stats))
    tree.add(base + "fail_loc", lambda: str(t.fail) if t.fail else "none",
             lambda text: _set_fail_loc(t, text))
    if t.lock_types:
        ldlm = t.ldlm
        ns = f"ldlm.namespaces.{t.name}."
        tree.add(ns + "lock_count", lambda: len(ldlm.namespace))
        tree.add(ns + "granted_count", lambda: ldlm.namespace.granted_count)
        tree.add(ns + "waiting_count", lambda: ldlm.namespace.waiting_count)
        tree.add(ns + "resource_count", lambda: len(ldlm.namespace.resources()))
        tree.add(ns + "ldlm_timeout", lambda: t.ldlm_timeout)
        tree.add(ns + "max_locks_per_client", lambda: ldlm.max_locks,
                 lambda text: _set_max_locks(t, text))
        tree.add(ns + "locks", ldlm.dump)
    if t.barrier is not None:
        tree.add(base + "barrier_stat", t.barrier.stat_lines)
    if t.recovery is not None:
        t.recovery.add_params(tree, base)
    return tree


async def admin(t: AdminTarget, body: Any) -> dict[str, Any]:
    """An OBD_ADMIN request: a barrier operation, or lctl get/set/list of parameters."""
    op = body.get("op") if isinstance(body, dict) else None
    if op in ("barrier_freeze", "barrier_thaw", "barrier_stat"):
        return await barrier_admin(t, op, body)
    try:
        return t.params().handle(body)
    except ParamError as e:
        raise ServiceError(e.errno, str(e)) from None


async def barrier_admin(t: AdminTarget, op: str, body: dict[str, Any]) -> dict[str, Any]:
    """lctl barrier_freeze / barrier_thaw / barrier_stat on this target."""
    if t.barrier is None:
        raise ServiceError(errno.EOPNOTSUPP, f"{t.name} has no barrier (no lock "
                                             "namespace)")
    if op == "barrier_freeze":
        timeout = body.get("timeout", DEFAULT_FREEZE_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not 0 < timeout <= 86400:
            raise ServiceError(errno.EINVAL, "barrier timeout must be a number of "
                                             "seconds in (0, 86400]")
        report = await t.barrier.freeze(float(timeout))
        return {"target": t.name, "frozen": asdict(report), **t.barrier.stat()}
    if op == "barrier_thaw":
        return {"target": t.name, "thawed": t.barrier.thaw(), **t.barrier.stat()}
    return {"target": t.name, **t.barrier.stat()}


def stats_lines(stats: dict[str, int]) -> list[str]:
    lines = [f"snapshot_time             {time.time():.6f} secs.usecs"]
    lines += [f"{k:<25} {v} samples [reqs]" for k, v in sorted(stats.items())]
    return lines


def _set_fail_loc(t: AdminTarget, text: str) -> None:
    try:
        t.fail = fail_loc.parse(text)
    except fail_loc.FailLocError as e:
        raise ParamError(errno.EINVAL, str(e)) from None
    log.warning("%s: fail_loc set to %s", t.name, t.fail or "none")


def _set_max_connections(t: AdminTarget, text: str) -> None:
    t.connections.limit = parse_positive_int(text, limit=1 << 20)


def _set_max_locks(t: AdminTarget, text: str) -> None:
    t.ldlm.max_locks = parse_positive_int(text, limit=1 << 30)


def _set_evict_threshold(t: AdminTarget, text: str) -> None:
    value = 0 if text.strip() == "0" else parse_positive_int(text, limit=1 << 20)
    t.misbehaviour.threshold = value


def _set_evict_window(t: AdminTarget, text: str) -> None:
    t.misbehaviour.window = parse_positive_float(text, limit=86400.0)


def _set_commit_interval(t: AdminTarget, text: str) -> None:
    t.commit_interval = parse_positive_float(text, limit=3600.0)
    t.want_commit()  # restart the commit loop's wait with the new interval
