"""The recovery window as a component (servers/recovery_window.py), driven against a
fake target through its narrow interface (interfaces.RecoveryHost): no server, no
sockets; trio's MockClock runs the window's timers at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
import trio.testing

from mlustre.protocol import constants as C
from mlustre.protocol.message import Message
from mlustre.servers.export import Export, Stats
from mlustre.servers.recovery_window import RecoveryWindow
from mlustre.servers.request_gate import Route
from mlustre.servers.storage import TargetStorage


class FakeHost:
    """What the window may ask of its target, recorded."""

    def __init__(self) -> None:
        self.name = "fs-OST0000"
        self.exports: dict[str, Export] = {}
        self.last_transno = 0
        self.calls: list[tuple[str, str]] = []
        self.window: RecoveryWindow | None = None

    async def evict(self, uuid: str, reason: str) -> None:
        self.calls.append(("evict", uuid))
        self.exports.pop(uuid, None)

    async def evict_unrecovered(self, uuid: str, reason: str) -> None:
        self.calls.append(("evict_unrecovered", uuid))

    def client_left(self, uuid: str) -> None:
        """(As TargetServer.client_left: the window forgets the client too.)"""
        self.calls.append(("client_left", uuid))
        if self.window is not None:
            self.window.client_left(uuid)


def export(uuid: str) -> Export:
    return Export(uuid, endpoint=None, flags=C.OBD_CONNECT_TRANSNO)  # type: ignore[arg-type]


def window(tmp_path: Path, known: list[str], host: FakeHost) -> RecoveryWindow:
    (tmp_path / "recovery.json").write_text(json.dumps(known))
    w = RecoveryWindow(host, TargetStorage(tmp_path), Stats(), window=10.0)
    w.load_known()
    host.window = w
    return w


def test_every_known_client_done_ends_recovery(tmp_path: Path) -> None:
    host = FakeHost()
    w = window(tmp_path, ["a", "b"], host)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            w.start(nursery, trio.current_time() + 10.0)
            assert w.recovering
            for uuid in ("a", "b"):
                w.replay_finished(export(uuid))
            assert w.recovering  # the lock phase is left
            w.lock_replay_finished(export("a"))
            w.lock_replay_finished(export("b"))
            assert not w.recovering
            assert w.recovery_lines()[:2] == ["status: COMPLETE", "completed_clients: 2/2"]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert host.calls == []


def test_the_window_evicts_the_clients_that_did_not_come_back(tmp_path: Path) -> None:
    host = FakeHost()
    w = window(tmp_path, ["back", "gone"], host)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            w.start(nursery, trio.current_time() + 10.0)
            host.exports["back"] = export("back")
            w.client_joined(host.exports["back"])
            await trio.sleep(11.0)
            assert host.calls == [("evict_unrecovered", "gone"), ("client_left", "gone")]
            assert w.recovering  # "back" still has up to twice the window to finish
            await trio.sleep(20.0)
            assert not w.recovering
            assert host.calls[2:] == [("evict_unrecovered", "back"), ("client_left", "back")]
            assert w.stats["recovery_evictions"] == 2
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_replays_run_in_transno_order_and_requests_wait(tmp_path: Path) -> None:
    host = FakeHost()
    w = window(tmp_path, ["a", "b"], host)
    ran: list[Any] = []

    async def handler(exp: Export, req: Message) -> Any:
        ran.append((exp.uuid, req.transno or req.opc))
        host.last_transno = max(host.last_transno, req.transno)
        return {}

    def replay(transno: int) -> Message:
        return Message.request(C.OST_WRITE, transno, {}, flags=C.MSG_REPLAY, transno=transno)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            w.start(nursery, trio.current_time() + 10.0)
            nursery.start_soon(w.dispatch, Route.HOLD, handler, export("a"),
                               Message.request(C.OST_READ, 9, {}))
            nursery.start_soon(w.dispatch, Route.REPLAY, handler, export("a"), replay(2))
            await trio.sleep(1.0)
            assert ran == []  # 2 waits: "b" may still send 1
            nursery.start_soon(w.dispatch, Route.REPLAY, handler, export("b"), replay(1))
            await trio.sleep(1.0)
            assert ran == [("b", 1), ("a", 2)]
            for uuid in ("a", "b"):
                w.lock_replay_finished(export(uuid))
            await trio.sleep(1.0)
            assert ran[2:] == [("a", C.OST_READ)]  # held until recovery was over
            assert w.stats["replayed_updates"] == 2 and w.stats["recovery_waits"] == 1
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_ping_evictor_evicts_silent_clients_through_the_host(tmp_path: Path) -> None:
    host = FakeHost()
    w = window(tmp_path, [], host)  # nothing to recover
    w.ping_evict_timeout = 4.0

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            w.start(nursery, trio.current_time())
            silent = host.exports["silent"] = export("silent")
            silent.last_seen = trio.current_time()
            w.client_joined(silent)
            await trio.sleep(6.0)
            assert host.calls == [("evict", "silent"), ("client_left", "silent")]
            assert w.stats["ping_evictions"] == 1
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
