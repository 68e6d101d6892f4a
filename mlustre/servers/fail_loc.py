"""fail_loc.py - fault injection set at run time (Lustre's fail_loc), for tests and
for users who want to see recovery work: drop a request, drop a reply, delay one, or
crash the server at a named point, for one opcode, once or every time.

Syntax of the lctl value: `none`, or `ACTION:OPCODE[:once]` with ACTION one of
`drop_request`, `drop_reply`, `crash_before` (the server kills itself, SIGKILL, when
the request arrives: nothing of it is done), `crash_after` (it kills itself once the
request is done and its reply recorded, before the reply goes out), and
`delay:OPCODE:SECONDS[:once]`, and `errno:OPCODE:ERRNO[:once]` (the request fails
with that errno, a name such as `ENOSPC` or a number, and changes nothing: how tests
make one of several parallel RPCs fail); OPCODE is a name (`MDS_REINT`, `OST_WRITE`, ...) or a
number. Dropping closes the connection, as a network failure would: the client
reconnects and resends. After a crash the server must be started again (e.g.
`mlustre failover MNT TARGET`); its clients then resend.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ..protocol import constants as C

ACTIONS = ("drop_request", "drop_reply", "delay", "crash_before", "crash_after", "errno")
_BY_NAME = {name: opc for opc, name in C.OPCODE_NAMES.items()}


class FailLocError(ValueError):
    pass


@dataclass(slots=True)
class FailLoc:
    action: str
    opc: int
    once: bool = False
    seconds: float = 0.0
    hits: int = 0
    err: int = 0  # for "errno"

    def matches(self, opc: int) -> bool:
        return opc == self.opc and not (self.once and self.hits)

    def __str__(self) -> str:
        name = C.OPCODE_NAMES.get(self.opc, str(self.opc))
        parts = [self.action, name] + ([f"{self.seconds:g}"] if self.action == "delay" else [])
        parts += [errno.errorcode.get(self.err, str(self.err))] if self.action == "errno" else []
        parts += ["once"] if self.once else []
        return ":".join(parts) + f" (hit {self.hits})"


def parse(text: str) -> FailLoc | None:
    """The fail_loc a value sets (None: none); FailLocError with a clear message."""
    text = text.strip()
    if text in ("", "none", "0"):
        return None
    parts = text.split(":")
    action = parts[0]
    if action not in ACTIONS:
        raise FailLocError(f"unknown fail_loc action {action!r} (one of: none, "
                           f"{', '.join(ACTIONS)})")
    if len(parts) < 2:
        raise FailLocError(f"{action} needs an opcode, e.g. {action}:MDS_REINT")
    opc_text = parts[1]
    opc = _BY_NAME.get(opc_text.upper())
    if opc is None:
        try:
            opc = int(opc_text, 0)
        except ValueError:
            raise FailLocError(f"unknown opcode {opc_text!r}") from None
    rest = parts[2:]
    seconds = 0.0
    if action == "delay":
        if not rest:
            raise FailLocError("delay needs seconds, e.g. delay:OST_WRITE:2")
        try:
            seconds = float(rest.pop(0))
        except ValueError:
            raise FailLocError("delay seconds must be a number") from None
        if not 0 < seconds <= 600:
            raise FailLocError("delay seconds must be in (0, 600]")
    err = 0
    if action == "errno":
        if not rest:
            raise FailLocError("errno needs an errno, e.g. errno:OST_PUNCH:ENOSPC")
        name = rest.pop(0)
        err = getattr(errno, name.upper(), None) if not name.isdigit() else int(name)
        if not isinstance(err, int) or not 0 < err < 4096:
            raise FailLocError(f"unknown errno {name!r}")
    once = False
    if rest == ["once"]:
        once = True
    elif rest:
        raise FailLocError(f"unexpected {':'.join(rest)!r} (only 'once' may follow)")
    return FailLoc(action, opc, once, seconds, err=err)
