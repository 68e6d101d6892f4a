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

from .. import registry
from ..procs import detach_stdout_to_stderr
from ..protocol.errors import AuthError, ConnectionLost, RpcError
from ..protocol.keyfile import KeyFileError, load_key
from . import admin, kernel_readahead
from .node import Mount

log = logging.getLogger("mlustre.client")


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
    return p.parse_args(argv)


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
        pyfuse3.init(mount.ops, args.mountpoint, options)
        mount.kernel.ready = True
        registry.register_mount(args.mountpoint, {
            "pid": os.getpid(), "spec": args.spec, "fsname": node.fsname,
            "cluster_data": args.cluster_data, "uuid": node.uuid,
            "key": os.path.abspath(args.key) if args.key else None,
            "admin_socket": str(admin_path)})
        mount.start(nursery)
        nursery.start_soon(admin.serve_admin, listener, admin.client_params(mount))
        nursery.start_soon(kernel_readahead.keep_wide, args.mountpoint)
        print(f"READY mounted {args.spec} on {args.mountpoint} pid={os.getpid()}", flush=True)
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
