"""limits.py - what a target allows one client and all of them (sans-IO).

A server must survive clients that send anything at all. Field checks refuse
single bad requests; these limits bound what a client can hold (locks), how many
connections the server keeps, and when a client that keeps breaking the protocol
is evicted instead of answered over and over. The decisions live here, without
I/O, so that they can be tested and tuned apart from the server loop
(`target.py` and `ldlm_service.py` apply them; docs/protocol.md, "Limits").
"""

from __future__ import annotations

import resource
from collections import deque
from dataclasses import dataclass, field

# Locks one client may hold on one target. A mount's lock LRU keeps 100 unused locks
# per namespace (fuse_client/ldlm.py) and the locks in use are bounded by its open
# files and I/O in flight, so 100,000 never bites a real client.
DEFAULT_MAX_LOCKS = 100_000
# Connections one server keeps: every mount has one per target, servers one each
# between them. Kept well below the process's descriptor limit, so that an accept
# never fails for lack of a descriptor and the object files and the database keep
# theirs.
MAX_CONNECTIONS_CAP = 4096
FD_RESERVE = 128
# Protocol violations of one client within EVICT_WINDOW seconds that get it evicted.
DEFAULT_EVICT_THRESHOLD = 16
DEFAULT_EVICT_WINDOW = 60.0
TRACKED_MAX = 4096  # clients whose recent violations are remembered (the oldest go first)
# Violations that count (see docs/protocol.md, "Eviction of misbehaving clients").
VIOLATIONS = ("malformed", "oversized", "bad_field", "foreign_lock", "foreign_handle",
              "lock_limit")


def default_max_connections() -> int:
    """The connection limit when none is given: MAX_CONNECTIONS_CAP, or less when the
    process may open fewer descriptors than that."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CAP
    return max(16, min(MAX_CONNECTIONS_CAP, soft - FD_RESERVE))


@dataclass
class Misbehaviour:
    """Counts each client's protocol violations in a sliding window and says when a
    client has earned eviction.

    What a real client never does counts (undecodable or oversized messages, fields of
    the wrong type or missing, cancels of another client's locks, closes of another
    client's open handles, going over the lock limit); what it may legitimately
    cause (a name too long, an offset out of range from an application, a lock
    already gone) does not. One slip is answered with an error; `threshold` of them
    within `window` seconds evict the client."""

    threshold: int = DEFAULT_EVICT_THRESHOLD
    window: float = DEFAULT_EVICT_WINDOW
    _seen: dict[str, deque[float]] = field(default_factory=dict)

    def note(self, uuid: str, now: float) -> bool:
        """Record one violation of `uuid` at `now`; True if it must now be evicted (its
        record is then cleared, so it is evicted once)."""
        if self.threshold <= 0:  # 0: never evict for violations
            return False
        times = self._seen.pop(uuid, None) or deque()
        self._seen[uuid] = times  # (most recent last: the oldest are dropped first)
        while len(self._seen) > TRACKED_MAX:
            del self._seen[next(iter(self._seen))]
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.threshold:
            del self._seen[uuid]
            return True
        return False

    def forget(self, uuid: str) -> None:
        self._seen.pop(uuid, None)

    def count(self, uuid: str, now: float) -> int:
        """Violations of `uuid` still within the window."""
        times = self._seen.get(uuid)
        return sum(1 for t in times if t > now - self.window) if times else 0


@dataclass
class ConnectionLimit:
    """How many connections a server keeps; those beyond are refused."""

    limit: int = field(default_factory=default_max_connections)
    current: int = 0

    def admit(self) -> bool:
        """Take a slot for a new connection if there is one."""
        if self.current >= self.limit:
            return False
        self.current += 1
        return True

    def release(self) -> None:
        self.current = max(0, self.current - 1)
