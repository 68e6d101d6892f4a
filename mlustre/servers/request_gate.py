"""request_gate.py - what a target does with each request, decided without I/O.

A target's request driver (target.py `_handle_one`) asks the gate three questions, in
this order, and acts on each answer:

1. `admit`: connect, ping (with the client's end-of-replay flags), refuse a request
   of a client that is not connected (ENOTCONN), disconnect, or go on.
2. `fault`: the fail_loc action this request hits, if any (drop it, delay it, crash
   before or after it, drop its reply). The driver performs the drop, delay or crash.
3. `route`: for an update whose reply is kept (reconstructable), a resend or replay
   is answered from the reply log, acknowledged when its effect survived a crash, or
   answered when the first execution still running finishes; everything else is
   dispatched to its handler, on a path through recovery (`Route`): run now, held
   until recovery is over, replayed in transno order, a lock replay in the lock phase,
   or an open replay after the update replays.

Plain class: the driver passes what it knows (is the client connected, the saved
reply, is the request running, is the target recovering) and gets a `Decision`.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from enum import Enum

from ..protocol import constants as C
from ..protocol.ldlm import FL_REPLAY
from ..protocol.message import Message
from .fail_loc import FailLoc
from .reply_log import SavedReply


class Action(Enum):
    CONNECT = "connect"  # a new (or re-) connection: make the export
    PING = "ping"  # answered at once; may end the client's replay phases
    REJECT = "reject"  # answered with errno (Decision.errno, .message)
    DISCONNECT = "disconnect"  # commit, release the client's locks, forget it
    PROCEED = "proceed"  # admitted: check the body, then ask `fault` and `route`
    RECONSTRUCT = "reconstruct"  # answer with the saved reply (or drop it: fail_loc)
    ACK_SURVIVED = "ack_survived"  # a replay whose update survived the crash
    AWAIT_RUNNING = "await_running"  # the first execution runs: answer when it is done
    DISPATCH = "dispatch"  # run the handler on Decision.route


class Fault(Enum):
    """The fail_loc action a request hits (fail_loc.py)."""

    NONE = "none"
    DROP_REQUEST = "drop_request"  # close the connection: no reply, nothing done
    DELAY = "delay"  # sleep FailLoc.seconds, then go on
    ERRNO = "errno"  # fail with FailLoc.err, changing nothing
    CRASH_BEFORE = "crash_before"  # kill -9 before doing anything
    CRASH_AFTER = "crash_after"  # kill -9 once done and recorded, before the reply
    DROP_REPLY = "drop_reply"  # do it, then close the connection instead of replying


class Route(Enum):
    """A dispatched request's path through the target's recovery."""

    RUN = "run"  # the handler, now
    HOLD = "hold"  # wait until recovery is over (others' replays first), then run
    REPLAY = "replay"  # a replayed update: in global transno order while recovering
    LOCK_REPLAY = "lock_replay"  # a lock of the last instance: in the lock phase only
    AFTER_UPDATE_REPLAYS = "after_update_replays"  # an open replay: after the updates


@dataclass(frozen=True)
class Decision:
    action: Action
    errno: int = 0
    message: str = ""
    route: Route = Route.RUN
    track: bool = False  # keep the reply (reconstructable update): mark it running
    drop_reply: bool = False  # fail_loc: close the connection instead of replying
    replay_done: bool = False  # PING: the client replayed its updates
    lock_replay_done: bool = False  # PING: ... and its locks


PROCEED = Decision(Action.PROCEED)
# The decisions most requests get, made once (a frozen dataclass is slow to build,
# and every request asked for one).
_PING = Decision(Action.PING)
_DISPATCH = {(track, route): Decision(Action.DISPATCH, route=route, track=track)
             for track in (False, True) for route in Route}
# Besides replays, what goes on during recovery: lctl and lock cancels.
RECOVERY_EXEMPT = frozenset({C.OBD_ADMIN, C.LDLM_CANCEL})


def is_lock_replay(req: Message) -> bool:
    if req.opc != C.LDLM_ENQUEUE or not isinstance(req.body, dict):
        return False
    flags = req.body.get("flags", 0)
    return type(flags) is int and flags >= 0 and bool(flags & FL_REPLAY)


class RequestGate:
    """The request decisions of one target, configured by its kind's opcodes."""

    def __init__(self, *, connect_opcodes: tuple[int, ...] | frozenset[int] = (),
                 disconnect_opcodes: tuple[int, ...] | frozenset[int] = (),
                 reconstructable_opcodes: frozenset[int] = frozenset(),
                 recovers: bool = False) -> None:
        self.connect_opcodes = frozenset(connect_opcodes)
        self.disconnect_opcodes = frozenset(disconnect_opcodes)
        self.reconstructable_opcodes = reconstructable_opcodes
        self.recovers = recovers  # the target has a recovery window (MDT, OST)

    def admit(self, req: Message, *, connected: bool) -> Decision:
        if req.opc in self.connect_opcodes:
            return Decision(Action.CONNECT)
        if req.opc == C.OBD_PING:
            if not connected or not req.flags & (C.MSG_REQ_REPLAY_DONE
                                                 | C.MSG_LOCK_REPLAY_DONE):
                return _PING
            return Decision(Action.PING,
                            replay_done=connected and bool(req.flags & C.MSG_REQ_REPLAY_DONE),
                            lock_replay_done=connected
                            and bool(req.flags & C.MSG_LOCK_REPLAY_DONE))
        if not connected:
            return Decision(Action.REJECT, errno.ENOTCONN, "not connected")
        if req.opc in self.disconnect_opcodes:
            return Decision(Action.DISCONNECT)
        return PROCEED

    @staticmethod
    def fault(fail: FailLoc | None, opc: int) -> Fault:
        """The fail_loc action `opc` hits now (the driver counts the hit)."""
        if fail is None or not fail.matches(opc):
            return Fault.NONE
        return Fault(fail.action)

    def reconstructable(self, req: Message) -> bool:
        """Is this a resend or replay of an update whose reply is kept (worth looking
        up in the reply log)?"""
        return (req.opc in self.reconstructable_opcodes
                and bool(req.flags & (C.MSG_RESENT | C.MSG_REPLAY)))

    def route(self, req: Message, *, fault: Fault = Fault.NONE,
              saved: SavedReply | None = None, survived: bool = False,
              running: bool = False, recovering: bool = False,
              open_replay: bool = False) -> Decision:
        """After the fail_loc delay: answer from what is kept, or dispatch.

        saved: the reply log's reply to this (client, xid); survived: a replay whose
        transno the store already holds; running: its first execution is still
        running; recovering: the recovery window is open; open_replay: the target
        says the request is an open replay (after_update_replay)."""
        drop_reply = fault is Fault.DROP_REPLY
        track = req.opc in self.reconstructable_opcodes
        if track and req.flags & (C.MSG_RESENT | C.MSG_REPLAY):
            if saved is not None:
                return Decision(Action.RECONSTRUCT, drop_reply=drop_reply)
            if survived and req.flags & C.MSG_REPLAY:
                return Decision(Action.ACK_SURVIVED)
            if running:
                return Decision(Action.AWAIT_RUNNING)
        route = self._recovery_route(req, recovering, open_replay)
        if not drop_reply:
            return _DISPATCH[track, route]
        return Decision(Action.DISPATCH, route=route, track=track, drop_reply=drop_reply)

    def _recovery_route(self, req: Message, recovering: bool, open_replay: bool) -> Route:
        if not self.recovers:
            return Route.RUN
        if is_lock_replay(req):
            return Route.LOCK_REPLAY
        if open_replay:
            return Route.AFTER_UPDATE_REPLAYS
        replaying = bool(req.flags & C.MSG_REPLAY and req.transno)
        if recovering and not replaying and req.opc not in RECOVERY_EXEMPT:
            return Route.HOLD
        return Route.REPLAY if replaying else Route.RUN

