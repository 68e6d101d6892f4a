"""metrics_server.py - serve a process's metrics over HTTP (GET /metrics) from its own
trio loop (the driver around metrics.py).

Why not prometheus_client's HTTP server: it runs in a thread of its own, and its
scrapes would read the lock namespaces, the page cache and the imports while the trio
loop changes them. Here a scrape is one trio task: it reads the ParamTree getters between
two awaits, on the loop that owns that state, like an lctl request does.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Mapping, Sequence

import trio

from . import metrics
from .params import ParamTree

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0  # a client that sends no request head in time is dropped


def render_params(tree: ParamTree, states: Mapping[str, Sequence[str]] | None = None
                  ) -> bytes:
    """The exposition of the parameters of `tree` that feed metrics."""
    pairs = [(p.name, p.get()) for p in tree.match("*") if metrics.wanted(p.name)]
    return metrics.exposition(metrics.families(pairs, states))


async def open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Listen on HOST:PORT (PORT 0: any free one; a name may give an IPv4 and an IPv6
    listener); OSError with a one-line reason."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as e:
        why = "address in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        err = OSError(f"cannot serve metrics on {host}:{port}: {why}")
        err.errno = e.errno
        raise err from None


def address_of(listeners: list[trio.SocketListener]) -> str:
    """HOST:PORT of the first listener (the one READY lines and status report)."""
    host, port = listeners[0].socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(listeners: list[trio.SocketListener], render: Callable[[], bytes]) -> None:
    """Answer HTTP requests on listeners until cancelled, each with metrics.http_reply."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            head = b""
            with trio.move_on_after(REQUEST_TIMEOUT):
                while b"\r\n\r\n" not in head and len(head) < metrics.MAX_REQUEST_HEAD:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    head += chunk
            if head:
                await stream.send_all(metrics.http_reply(head, render))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            await stream.aclose()

    await trio.serve_listeners(handle, listeners)
