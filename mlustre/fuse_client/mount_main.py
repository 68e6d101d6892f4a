"""mount_main.py - the client process: connect to a filesystem and serve a FUSE mount.

One process per mount (pyfuse3 allows one filesystem per process). Stops
cleanly on unmount, SIGTERM or SIGINT: dirty data is written back first.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys

import pyfuse3
import trio

from .. import metrics_server, registry
from ..metrics import parse_address
from ..procs import detach_stdout_to_stderr
from ..protocol.errors import AuthError, ConnectionLost, RpcError
from ..protocol.keyfile import KeyFileError, load_key
from . import admin, kernel_readahead
from .barrier_gate import GateState
from .import_state import ImportState
from .node import Mount

log = logging.getLogger("mlustre.client")


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mlustre-client")
    p.add_argument("spec")
    p.add_argument("mountpoint")
    p.add_argument("--release", default="2.0")
    p.add_argument("--max-dirty-mb", type=int, default=256)
    p.add_argument("--max-cached-mb", type=int, default=512)
    p.add_argument("--cluster-data", default=None)
    p.add_argument("--key", default=None, help="the filesystem's key file (secure filesystems)")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--mount-timeout", type=float, default=20.0)
    p.add_argument("--no-update-lock", action="store_true",
                   help="do not use the SIR barrier lock (recover by resend and replay)")
    p.add_argument("--metrics", metavar="HOST:PORT", default=None, type=_address,
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (PORT 0: any)")
    return p.parse_args(argv)


# The states of an import and of a writer gate (metrics list them all).
METRIC_STATES = {"import": [s.value for s in ImportState], "gate": [s.value for s in GateState]}


async def run(args: argparse.Namespace) -> None:
    # Resolve now: once mounted, touching the mount point from this process would deadlock.
    args.mountpoint = os.path.realpath(args.mountpoint)
    key = load_key(args.key) if args.key else None
    mount = Mount(args.spec, release=args.release, mount_timeout=args.mount_timeout,
                  update_lock=not args.no_update_lock, key=key,
                  max_dirty_mb=args.max_dirty_mb, max_cached_mb=args.max_cached_mb)
    node = mount.client
    async with trio.open_nursery() as nursery:
        await mount.connect(nursery)
        options = set(pyfuse3.default_options)
        options |= {f"fsname={args.spec}", "subtype=mlustre", "allow_other"}
        admin_path = admin.socket_path(registry.state_dir(), os.getpid())
        listener = await admin.open_admin_socket(admin_path)
        # Before the mount: an address in use fails the mount, not a mounted client.
        metrics = (await metrics_server.open_listeners(*args.metrics)
                   if args.metrics else None)
        metrics_at = metrics_server.address_of(metrics) if metrics is not None else None
        pyfuse3.init(mount.ops, args.mountpoint, options)
        mount.kernel.ready = True
        registry.register_mount(args.mountpoint, {
            "pid": os.getpid(), "spec": args.spec, "fsname": node.fsname,
            "cluster_data": args.cluster_data, "uuid": node.uuid,
            "key": os.path.abspath(args.key) if args.key else None,
            "admin_socket": str(admin_path), "metrics": metrics_at})
        mount.start(nursery)
        tree = admin.client_params(mount)
        nursery.start_soon(admin.serve_admin, listener, tree)
        if metrics is not None:
            nursery.start_soon(metrics_server.serve, metrics,
                               lambda: metrics_server.render_params(tree, METRIC_STATES))
        nursery.start_soon(kernel_readahead.keep_wide, args.mountpoint)
        print(f"READY mounted {args.spec} on {args.mountpoint} pid={os.getpid()}"
              + (f" metrics={metrics_at}" if metrics_at else ""), flush=True)
        detach_stdout_to_stderr()

        async def on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for sig in signals:
                    log.info("signal %d: unmounting", sig)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signals)
        unmount = True
        try:
            await pyfuse3.main(min_tasks=2, max_tasks=64)
            log.info("file system unmounted; writing back")
        except BaseException:
            unmount = False
            raise
        finally:
            mount.kernel.ready = False  # no kernel to tell about invalidations any more
            with trio.CancelScope(shield=True):
                with trio.move_on_after(60):
                    await mount.shutdown()
                pyfuse3.close(unmount=unmount)
                registry.unregister_mount(args.mountpoint, os.getpid(), real=True)
                try:
                    admin_path.unlink()
                except FileNotFoundError:
                    pass
                with trio.move_on_after(5):
                    await node.close()
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1)
    try:
        trio.run(run, args)
    except (ConnectionLost, RpcError, OSError, AuthError, KeyFileError) as e:
        print(f"error: cannot mount {args.spec} on {args.mountpoint}: {e}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as eg:
        first = eg.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        if isinstance(first, ConnectionLost | RpcError | OSError | RuntimeError | AuthError
                      | KeyFileError):
            print(f"error: cannot mount {args.spec} on {args.mountpoint}: {first}",
                  file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
