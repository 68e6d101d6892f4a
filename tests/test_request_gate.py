"""The request gate (servers/request_gate.py): what a target does with each request,
as a table - admission, fail_loc faults, reply reconstruction, recovery routes."""

from __future__ import annotations

import errno

import pytest

from mlustre.protocol import constants as C
from mlustre.protocol.ldlm import FL_BLOCK_GRANTED, FL_REPLAY
from mlustre.protocol.message import Message
from mlustre.servers import fail_loc
from mlustre.servers.reply_log import SavedReply
from mlustre.servers.request_gate import (
    Action,
    Decision,
    Fault,
    RequestGate,
    Route,
    is_lock_replay,
)

RESENT, REPLAY = C.MSG_RESENT, C.MSG_REPLAY
SAVED = SavedReply(7, 0, {"attr": {}})

MDT = RequestGate(connect_opcodes=(C.MDS_CONNECT,), disconnect_opcodes=(C.MDS_DISCONNECT,),
                  reconstructable_opcodes=frozenset({C.MDS_REINT, C.MDS_CLOSE}), recovers=True)
MGS = RequestGate(connect_opcodes=(C.MGS_CONNECT,), disconnect_opcodes=(C.MGS_DISCONNECT,))


def req(opc: int, flags: int = 0, transno: int = 0, body: dict | None = None) -> Message:
    return Message.request(opc, 1, body or {}, flags=flags, transno=transno)


# -- admission: (opcode, flags, connected) -> decision --
ADMIT = [
    (C.MDS_CONNECT, 0, False, Decision(Action.CONNECT)),
    (C.MDS_CONNECT, 0, True, Decision(Action.CONNECT)),  # a reconnect
    (C.OBD_PING, 0, False, Decision(Action.PING)),
    (C.OBD_PING, C.MSG_REQ_REPLAY_DONE, True, Decision(Action.PING, replay_done=True)),
    (C.OBD_PING, C.MSG_REQ_REPLAY_DONE, False, Decision(Action.PING)),  # nobody to tell
    (C.OBD_PING, C.MSG_REQ_REPLAY_DONE | C.MSG_LOCK_REPLAY_DONE, True,
     Decision(Action.PING, replay_done=True, lock_replay_done=True)),
    (C.MDS_REINT, 0, False, Decision(Action.REJECT, errno.ENOTCONN, "not connected")),
    (C.MDS_DISCONNECT, 0, False, Decision(Action.REJECT, errno.ENOTCONN, "not connected")),
    (C.MDS_DISCONNECT, 0, True, Decision(Action.DISCONNECT)),
    (C.MDS_REINT, 0, True, Decision(Action.PROCEED)),
    (C.OST_CONNECT, 0, True, Decision(Action.PROCEED)),  # another kind's connect: a handler's
]


@pytest.mark.parametrize(("opc", "flags", "connected", "want"), ADMIT)
def test_admit(opc: int, flags: int, connected: bool, want: Decision) -> None:
    assert MDT.admit(req(opc, flags), connected=connected) == want


# -- faults: fail_loc value, opcode -> fault --
@pytest.mark.parametrize(("value", "opc", "want"), [
    ("none", C.MDS_REINT, Fault.NONE),
    ("drop_request:MDS_REINT", C.MDS_REINT, Fault.DROP_REQUEST),
    ("drop_request:MDS_REINT", C.MDS_CLOSE, Fault.NONE),  # another opcode
    ("drop_reply:MDS_REINT", C.MDS_REINT, Fault.DROP_REPLY),
    ("delay:OST_WRITE:2", C.OST_WRITE, Fault.DELAY),
    ("crash_before:MDS_REINT", C.MDS_REINT, Fault.CRASH_BEFORE),
    ("crash_after:MDS_CLOSE", C.MDS_CLOSE, Fault.CRASH_AFTER),
    ("errno:OST_PUNCH:ENOSPC", C.OST_PUNCH, Fault.ERRNO),
    ("errno:OST_PUNCH:ENOSPC", C.OST_WRITE, Fault.NONE),
])
def test_fault(value: str, opc: int, want: Fault) -> None:
    assert RequestGate.fault(fail_loc.parse(value), opc) is want


def test_a_once_fault_hit_is_spent() -> None:
    fail = fail_loc.parse("drop_reply:MDS_REINT:once")
    assert RequestGate.fault(fail, C.MDS_REINT) is Fault.DROP_REPLY
    assert fail is not None
    fail.hits += 1  # (the driver counts the hit)
    assert RequestGate.fault(fail, C.MDS_REINT) is Fault.NONE


# -- routing of a kept update: flags, fault, saved?, survived?, running? -> decision --
ROUTE = [
    # first sending: run, its reply kept
    (0, Fault.NONE, None, False, False, "dispatch", dict(track=True)),
    (0, Fault.DROP_REPLY, None, False, False, "dispatch", dict(track=True, drop_reply=True)),
    # a resend whose reply is kept: answered again, not executed again
    (RESENT, Fault.NONE, SAVED, False, False, "reconstruct", {}),
    (RESENT, Fault.DROP_REPLY, SAVED, False, False, "reconstruct", dict(drop_reply=True)),
    (REPLAY, Fault.NONE, SAVED, True, False, "reconstruct", {}),  # saved wins
    # a replay the store already holds (its reply left the log): acknowledged
    (REPLAY, Fault.NONE, None, True, False, "ack_survived", {}),
    (REPLAY, Fault.DROP_REPLY, None, True, False, "ack_survived", {}),
    (RESENT, Fault.NONE, None, True, False, "dispatch", dict(track=True)),  # only replays
    # the first execution still runs: answered when it is done
    (RESENT, Fault.NONE, None, False, True, "await_running", {}),
    (RESENT, Fault.DROP_REPLY, None, False, True, "await_running", {}),
    # not kept, not running: executed (again)
    (RESENT, Fault.NONE, None, False, False, "dispatch", dict(track=True)),
    (0, Fault.NONE, SAVED, False, True, "dispatch", dict(track=True)),  # not a resend
]


@pytest.mark.parametrize(("flags", "fault", "saved", "survived", "running", "action", "rest"),
                         ROUTE)
def test_route_of_a_kept_update(flags: int, fault: Fault, saved: SavedReply | None,
                                survived: bool, running: bool, action: str,
                                rest: dict) -> None:
    d = MDT.route(req(C.MDS_REINT, flags), fault=fault, saved=saved, survived=survived,
                  running=running)
    assert d.action.value == action
    assert {k: getattr(d, k) for k in ("track", "drop_reply") if getattr(d, k)} == rest


def test_updates_not_kept_are_never_reconstructed() -> None:
    d = MDT.route(req(C.MDS_GETATTR, RESENT), fault=Fault.DROP_REPLY, saved=SAVED,
                  running=True)
    assert d == Decision(Action.DISPATCH, route=Route.RUN, drop_reply=True)
    assert MDT.reconstructable(req(C.MDS_REINT, RESENT))
    assert not MDT.reconstructable(req(C.MDS_REINT))
    assert not MDT.reconstructable(req(C.MDS_GETATTR, RESENT))


# -- recovery routes: request, recovering?, open replay? -> route --
LOCK_REPLAY = {"flags": FL_REPLAY | FL_BLOCK_GRANTED}
RECOVERY = [
    (req(C.MDS_GETATTR), False, False, Route.RUN),
    (req(C.MDS_GETATTR), True, False, Route.HOLD),  # waits for the others' replays
    (req(C.OBD_ADMIN), True, False, Route.RUN),  # lctl goes on during recovery
    (req(C.LDLM_CANCEL), True, False, Route.RUN),  # and so do lock cancels
    (req(C.MDS_REINT, REPLAY, transno=5), True, False, Route.REPLAY),
    (req(C.MDS_REINT, REPLAY, transno=5), False, False, Route.REPLAY),  # after: counted, run
    (req(C.MDS_REINT, REPLAY, transno=0), True, False, Route.HOLD),  # no transno: no replay
    (req(C.LDLM_ENQUEUE, body=LOCK_REPLAY), True, False, Route.LOCK_REPLAY),
    (req(C.LDLM_ENQUEUE, body=LOCK_REPLAY), False, False, Route.LOCK_REPLAY),  # refused then
    (req(C.LDLM_ENQUEUE, body={"flags": 0}), True, False, Route.HOLD),
    (req(C.MDS_REINT, REPLAY, transno=5), True, True, Route.AFTER_UPDATE_REPLAYS),
    (req(C.MDS_REINT), True, True, Route.AFTER_UPDATE_REPLAYS),  # an open replay
    (req(C.LDLM_ENQUEUE, body=LOCK_REPLAY), True, True, Route.LOCK_REPLAY),  # locks first
]


@pytest.mark.parametrize(("request_", "recovering", "open_replay", "route"), RECOVERY)
def test_recovery_route(request_: Message, recovering: bool, open_replay: bool,
                        route: Route) -> None:
    d = MDT.route(request_, recovering=recovering, open_replay=open_replay)
    assert d.action is Action.DISPATCH and d.route is route


def test_a_target_without_recovery_runs_everything() -> None:
    for r in (req(C.MGS_CONFIG_READ), req(C.LDLM_ENQUEUE, body=LOCK_REPLAY),
              req(C.MGS_TARGET_REG, REPLAY, transno=3)):
        d = MGS.route(r, recovering=True, open_replay=True)
        assert d == Decision(Action.DISPATCH)


@pytest.mark.parametrize("flags", [FL_REPLAY, FL_REPLAY | FL_BLOCK_GRANTED])
def test_is_lock_replay(flags: int) -> None:
    assert is_lock_replay(req(C.LDLM_ENQUEUE, body={"flags": flags}))
    assert not is_lock_replay(req(C.LDLM_CANCEL, body={"flags": flags}))
    assert not is_lock_replay(req(C.LDLM_ENQUEUE, body={"flags": -1}))
    assert not is_lock_replay(req(C.LDLM_ENQUEUE, body={"flags": "x"}))
