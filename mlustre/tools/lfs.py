"""lfs.py - `mlustre lfs`: a Lustre-like lfs for mounted mlustre filesystems.

    df [-h] [-i] [PATH]                 space (OSTs) and inodes (MDT) per target
    getstripe [-c|-S|-i] PATH...        a file's layout or a directory's default
    setstripe [-c N] [-S SIZE] [-i I] PATH
    path2fid PATH...                    [0xSEQ:0xOID:0xVER]
    fid2path MOUNT FID...               MOUNT/path
    check servers [PATH]                connect to every target, report each

Layouts go through the mount's `lustre.lov` xattr; df, fid2path and check
connect to the filesystem as a library client (ClientNode) or per-target
sessions, with timeouts, using the spec of the mount the path lives on.
The formatting and parsing helpers are pure functions, tested without a mount.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import stat
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from ..localcluster import mounts as mount_table

LOV_XATTR = "lustre.lov"
FSTYPE = "fuse.mlustre"
CONNECT_TIMEOUT = 3.0
MOUNT_TIMEOUT = 8.0
OVERALL_TIMEOUT = 30.0
STRIPE_SIZE_UNIT = 64 << 10

T = TypeVar("T")


class LfsError(Exception):
    """A user-facing failure: one message on stderr, exit status 1."""


# ---------------------------------------------------------------- pure helpers

_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """"1M" -> 1048576, "64K" -> 65536, "4096" -> 4096 (binary units; K/M/G/T, any case,
    an optional trailing "B" or "iB")."""
    t = text.strip().lower()
    for tail in ("ib", "b"):
        if len(t) > 1 and t.endswith(tail) and t[-len(tail) - 1].isalpha():
            t = t[: -len(tail)]
            break
    unit = t[-1:] if t[-1:].isalpha() else ""
    digits = t[: len(t) - len(unit)]
    if unit not in _SUFFIXES or not digits.isdigit():
        raise ValueError(f"not a size: {text!r} (examples: 1M, 64K, 1048576)")
    return int(digits) * _SUFFIXES[unit]


def human_size(nbytes: int) -> str:
    """Like lfs df -h: 1024-based, one decimal ("7.8G"); plain bytes below 1 KiB."""
    if nbytes < 1024:
        return f"{nbytes}"
    value = float(nbytes)
    for unit in "KMGTPE":
        value /= 1024
        if value < 1024 or unit == "E":
            return f"{value:.1f}{unit}"
    raise AssertionError("unreachable")


def use_percent(used: int, avail: int) -> str:
    """Lustre's Use%: used / (used + available), rounded up."""
    total = used + avail
    return f"{math.ceil(used * 100 / total)}%" if total else "-"


def parse_lov(text: str | bytes) -> dict[str, Any]:
    """Parse a lustre.lov value: int keys, and "objects" as [(ost, oid), ...]."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    out: dict[str, Any] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"bad layout item {item!r}")
        if key == "objects":
            out["objects"] = [tuple(int(x) for x in o.split(":", 1))
                              for o in value.split(",") if o]
        else:
            out[key] = int(value, 0)
    return out


def format_lov(count: int | None, size: int | None, offset: int | None) -> bytes:
    """The setfattr value for the given settings (None = not given)."""
    parts = [f"{k}={v}" for k, v in (("stripe_count", count), ("stripe_size", size),
                                     ("stripe_offset", offset)) if v is not None]
    return " ".join(parts).encode()


def check_stripe_args(count: int | None, size: int | None, offset: int | None) -> None:
    if count is None and size is None and offset is None:
        raise LfsError("setstripe needs at least one of -c COUNT, -S SIZE, -i OFFSET")
    if count is not None and count < -1:
        raise LfsError("stripe count must be -1 (all OSTs), 0 (the default) or a positive number")
    if size is not None and (size <= 0 or size % STRIPE_SIZE_UNIT):
        raise LfsError(f"stripe size must be a positive multiple of 64K ({STRIPE_SIZE_UNIT}), "
                       f"not {size}")
    if offset is not None and offset < -1:
        raise LfsError("stripe offset must be -1 (any OST) or an OST index")


def format_file_stripe(path: str, lov: dict[str, Any]) -> str:
    """`lfs getstripe FILE` output."""
    lines = [path,
             f"lmm_stripe_count:  {lov.get('stripe_count', 0)}",
             f"lmm_stripe_size:   {lov.get('stripe_size', 0)}",
             "lmm_pattern:       raid0",
             f"lmm_stripe_offset: {lov.get('stripe_offset', -1)}"]
    objects = lov.get("objects") or []
    if objects:
        lines.append("\tobdidx\t\t objid\t\t objid\t\t group")
        lines += [f"\t{ost:6d}\t{oid:14d}\t{oid:#13x}\t{0:14d}" for ost, oid in objects]
    return "\n".join(lines) + "\n"


def format_dir_stripe(path: str, lov: dict[str, Any] | None) -> str:
    """`lfs getstripe DIR` output: its default layout (missing keys: 0 = the
    filesystem's default, offset -1 = any OST)."""
    if lov is None:
        return f"{path} has no default layout (new files use the filesystem default)\n"
    return (f"{path}\nstripe_count:  {lov.get('stripe_count', 0)} "
            f"stripe_size:   {lov.get('stripe_size', 0)} "
            f"stripe_offset: {lov.get('stripe_offset', -1)}\n")


@dataclass
class DfRow:
    uuid: str
    total: int  # KiB, or inodes
    used: int
    avail: int
    where: str
    inodes: bool = False  # counts, never humanised as bytes


DF_HEADER_BLOCKS = ("UUID", "1K-blocks", "Used", "Available", "Use%", "Mounted on")
DF_HEADER_HUMAN = ("UUID", "bytes", "Used", "Available", "Use%", "Mounted on")
DF_HEADER_INODES = ("UUID", "Inodes", "IUsed", "IFree", "IUse%", "Mounted on")


def _df_line(cols: tuple[str, ...]) -> str:
    return f"{cols[0]:<20} {cols[1]:>12} {cols[2]:>12} {cols[3]:>12} {cols[4]:>5} {cols[5]}"


def format_df(rows: list[DfRow], summary: DfRow, *, human: bool = False,
              inodes: bool = False) -> str:
    """Lustre's `lfs df` table for one filesystem: a header, one line per target,
    a blank line, then filesystem_summary."""
    header = DF_HEADER_INODES if inodes else DF_HEADER_HUMAN if human else DF_HEADER_BLOCKS

    def cells(r: DfRow) -> tuple[str, ...]:
        if human and not r.inodes:
            nums = [human_size(v * 1024) for v in (r.total, r.used, r.avail)]
        else:
            nums = [str(v) for v in (r.total, r.used, r.avail)]
        return (r.uuid, *nums, use_percent(r.used, r.avail), r.where)

    out = [_df_line(header)] + [_df_line(cells(r)) for r in rows]
    out += ["", _df_line(cells(summary)), ""]
    return "\n".join(out) + "\n"


def df_rows(fsname: str, mnt: str, mdt: dict[str, Any], osts: dict[int, dict[str, Any]], *,
            inodes: bool = False) -> tuple[list[DfRow], DfRow]:
    """Rows from MDS_STATFS ({files, ffree}) and OST_STATFS (statvfs-like) replies.

    The MDT keeps no block counts: its line shows inodes in either mode. Blocks are
    KiB; the summary adds up the OSTs (blocks) or is the MDT's (inodes)."""
    mdt_row = DfRow(f"{fsname}-MDT0000_UUID", mdt["files"] + mdt["ffree"], mdt["files"],
                    mdt["ffree"], f"{mnt}[MDT:0]", inodes=True)
    rows = [mdt_row]
    for idx in sorted(osts):
        st = osts[idx]
        uuid, where = f"{fsname}-OST{idx:04X}_UUID", f"{mnt}[OST:{idx}]"
        if inodes:
            rows.append(DfRow(uuid, st["files"], st["files"] - st["ffree"], st["ffree"],
                              where, inodes=True))
        else:
            k = st["bsize"] / 1024
            rows.append(DfRow(uuid, int(st["blocks"] * k), int((st["blocks"] - st["bfree"]) * k),
                              int(st["bavail"] * k), where))
    if inodes:
        summary = DfRow("filesystem_summary:", mdt_row.total, mdt_row.used, mdt_row.avail, mnt,
                        inodes=True)
    else:
        ost_rows = rows[1:]
        summary = DfRow("filesystem_summary:", sum(r.total for r in ost_rows),
                        sum(r.used for r in ost_rows), sum(r.avail for r in ost_rows), mnt)
    return rows, summary


def format_check(rows: list[tuple[str, str, str]]) -> str:
    """(name, nid, state) lines of `lfs check servers`."""
    return "".join(f"{name:<24} {nid:<22} {state}\n" for name, nid, state in rows)


# ---------------------------------------------------------------- mounts

@dataclass
class Mount:
    mountpoint: str
    spec: str


def parse_mountinfo(text: str) -> list[Mount]:
    """mlustre mounts in /proc/self/mountinfo text (the source field is the spec)."""
    return [Mount(m.point, m.source) for m in mount_table.parse_mountinfo(text)
            if m.fstype == FSTYPE and m.source]


def mlustre_mounts() -> list[Mount]:
    from .. import registry

    found = [Mount(m.point, m.source) for m in mount_table.mounts()
             if m.fstype == FSTYPE and m.source]
    for m in found:  # the registry knows the spec a client was started with
        info = registry.find_mount(m.mountpoint)
        if info and info.get("spec"):
            m.spec = info["spec"]
    return found


def mount_of(path: str) -> Mount:
    """The mlustre mount that path (existing or not) lives on."""
    real = os.path.realpath(path)
    best = None
    for m in mlustre_mounts():
        mp = m.mountpoint.rstrip("/") or "/"
        if (real == mp or real.startswith(mp + "/") or mp == "/") and \
                (best is None or len(mp) > len(best.mountpoint)):
            best = m
    if best is None:
        raise LfsError(f"{path}: not on an mlustre filesystem")
    return best


def foreign_network(m: Mount) -> LfsError | None:
    """The error to give at once, instead of a connection that cannot work, when the
    client of mount m runs in another network namespace (a host of
    scripts/netns-cluster): lfs connects to the servers itself, from ours."""
    from .. import registry

    pid = (registry.find_mount(m.mountpoint) or {}).get("pid")
    if not registry.pid_alive(pid):
        return None
    try:
        theirs, ours = os.readlink(f"/proc/{pid}/ns/net"), os.readlink("/proc/self/ns/net")
    except OSError:
        return None
    if theirs == ours:
        return None
    return LfsError(f"{m.mountpoint}: its client (pid {pid}) runs in another network "
                    f"namespace, where its servers are reached: run lfs there, e.g. "
                    f"`nsenter --net=/proc/{pid}/ns/net mlustre lfs ...` (scripts/netns-cluster "
                    f"exec HOST ...)")


def _os_error(path: str, e: OSError) -> LfsError:
    return LfsError(f"{path}: {e.strerror or os.strerror(e.errno or 0)}")


# ---------------------------------------------------------------- library client

def _run_async(fn: Callable[[], Awaitable[T]]) -> T:
    import trio

    async def main() -> T:
        with trio.fail_after(OVERALL_TIMEOUT):
            return await fn()

    try:
        try:
            return trio.run(main)
        except BaseExceptionGroup as eg:  # trio nurseries wrap what their bodies raise
            raise _leaf(eg) from None
    except trio.TooSlowError:
        raise LfsError(f"no answer from the servers within {OVERALL_TIMEOUT:.0f} s") from None


def _leaf(eg: BaseExceptionGroup) -> BaseException:
    """The exception worth reporting in a group: an LfsError, else the first leaf."""
    leaves: list[BaseException] = []
    todo: list[BaseException] = [eg]
    while todo:
        e = todo.pop(0)
        if isinstance(e, BaseExceptionGroup):
            todo[:0] = list(e.exceptions)
        else:
            leaves.append(e)
    return next((e for e in leaves if isinstance(e, LfsError)), leaves[0] if leaves else eg)


def _key_for(spec: str) -> bytes | None:
    """The filesystem key this machine has for spec (its local cluster's, or the one a
    client mounted it with); LfsError if that key file is unusable."""
    from .. import registry
    from ..protocol.keyfile import KeyFileError

    try:
        return registry.key_for_spec(spec)
    except KeyFileError as e:
        raise LfsError(str(e)) from None


async def _with_node(spec: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Connect a ClientNode to spec, run fn(node), disconnect."""
    import trio

    from ..fuse_client.client import ClientNode
    from ..protocol.errors import AuthError, ConnectionLost, RpcError

    try:
        node = ClientNode(spec, connect_timeout=CONNECT_TIMEOUT, mount_timeout=MOUNT_TIMEOUT,
                          key=_key_for(spec))
    except ValueError as e:
        raise LfsError(str(e)) from None
    async with trio.open_nursery() as nursery:
        try:
            await node.connect(nursery)
            return await fn(node)
        except (ConnectionLost, AuthError) as e:
            raise LfsError(f"{spec}: {e}") from None
        except RpcError as e:
            raise LfsError(f"{spec}: {os.strerror(e.errno)}"
                           + (f" ({e})" if str(e) else "")) from None
        finally:
            with trio.move_on_after(5):
                await node.close()
            nursery.cancel_scope.cancel()
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- commands

def cmd_df(args: argparse.Namespace) -> int:
    mounts = [mount_of(args.path)] if args.path else mlustre_mounts()
    if not mounts:
        raise LfsError("no mlustre filesystem is mounted")
    Stats = tuple[dict[str, Any], dict[int, dict[str, Any]]]

    async def query(node: Any) -> Stats:
        mdt = await node.mdc.statfs()
        return mdt, {idx: await osc.statfs() for idx, osc in node.oscs.items()}

    async def ask_all() -> list[Stats | LfsError]:
        """Every mount at once: one that does not answer costs its timeout, not the
        sum of them all (other filesystems' servers may be away)."""
        import trio

        got: list[Stats | LfsError] = [LfsError("not asked")] * len(mounts)

        async def one(i: int, m: Mount) -> None:
            foreign = foreign_network(m)
            if foreign is not None:
                got[i] = foreign
                return
            try:
                got[i] = await _with_node(m.spec, query)
            except LfsError as e:
                got[i] = e
            except BaseExceptionGroup as eg:  # (a connection's task failed) - that mount's
                got[i] = LfsError(f"{m.spec}: {_leaf(eg)}")
            except Exception as e:  # (one mount failing must not end the others)
                got[i] = LfsError(f"{m.spec}: {e}")

        async with trio.open_nursery() as nursery:
            for i, m in enumerate(mounts):
                nursery.start_soon(one, i, m)
        return got

    from ..protocol.nid import parse_spec

    status = 0
    shown = 0
    for m, result in zip(mounts, _run_async(ask_all), strict=True):
        if isinstance(result, LfsError):
            if len(mounts) == 1:
                raise result
            print(f"mlustre lfs: {m.mountpoint}: {result}", file=sys.stderr)
            status = 1
            continue
        mdt, osts = result
        rows, summary = df_rows(parse_spec(m.spec)[1], m.mountpoint, mdt, osts,
                                inodes=args.inodes)
        if shown:
            print()
        shown += 1
        sys.stdout.write(format_df(rows, summary, human=args.human, inodes=args.inodes))
    return status


def _read_lov(path: str) -> tuple[os.stat_result, dict[str, Any] | None]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise _os_error(path, e) from None
    mount_of(path)
    try:
        return st, parse_lov(os.getxattr(path, LOV_XATTR))
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return st, None
        raise _os_error(path, e) from None
    except ValueError as e:
        raise LfsError(f"{path}: unreadable layout: {e}") from None


def cmd_getstripe(args: argparse.Namespace) -> int:
    status = 0
    only = args.only
    for path in args.paths:
        try:
            st, lov = _read_lov(path)
        except LfsError as e:
            print(f"mlustre lfs: {e}", file=sys.stderr)
            status = 1
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if only:
            default = {"stripe_count": 0, "stripe_size": 0, "stripe_offset": -1}[only]
            if lov is None and not is_dir:
                print(f"mlustre lfs: {path} has no stripe info", file=sys.stderr)
                status = 1
                continue
            value = (lov or {}).get(only, default)
            print(f"{path}: {value}" if len(args.paths) > 1 else value)
        elif is_dir:
            sys.stdout.write(format_dir_stripe(path, lov))
        elif lov is None:
            print(f"{path} has no stripe info")
        else:
            sys.stdout.write(format_file_stripe(path, lov))
    return status


def cmd_setstripe(args: argparse.Namespace) -> int:
    count, offset = args.stripe_count, args.stripe_index
    try:
        size = parse_size(args.stripe_size) if args.stripe_size is not None else None
    except ValueError as e:
        raise LfsError(str(e)) from None
    check_stripe_args(count, size, offset)
    value = format_lov(count, size, offset)
    path = args.path
    mount_of(path if os.path.lexists(path) else os.path.dirname(os.path.abspath(path)))

    def explain(e: OSError) -> LfsError:
        if e.errno == errno.EBUSY:
            return LfsError(f"{path}: cannot change the layout of a file with data")
        if e.errno == errno.EINVAL:
            return LfsError(f"{path}: invalid layout {value.decode()!r} "
                            "(is the OST index within the filesystem's OST count?)")
        return _os_error(path, e)

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        fd = -1
    except OSError as e:
        raise _os_error(path, e) from None
    if fd < 0:  # an existing directory, or an empty file
        try:
            st = os.stat(path)
        except OSError as e:
            raise _os_error(path, e) from None
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise LfsError(f"{path}: not a regular file or directory")
        if stat.S_ISREG(st.st_mode) and st.st_size:
            raise LfsError(f"{path}: cannot change the layout of a file with data")
        try:
            os.setxattr(path, LOV_XATTR, value)
        except OSError as e:
            raise explain(e) from None
        return 0
    try:  # a new file: set its layout before anything is written
        os.setxattr(fd, LOV_XATTR, value)
    except OSError as e:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise explain(e) from None
    os.close(fd)
    return 0


def fid_of_stat(st: os.stat_result) -> str:
    """The FID of an inode as the client sees it: st_ino is the MDT inode number; its
    normal FID does not depend on the generation (only IGIF FIDs, seq=ino/oid=gen, of
    objects created under 1.8 do, and this client names objects by normal FIDs)."""
    from ..protocol.fid import fid_of

    return str(fid_of(st.st_ino, 0))


def cmd_path2fid(args: argparse.Namespace) -> int:
    status = 0
    for path in args.paths:
        try:
            st = os.lstat(path)
            mount_of(path)
        except OSError as e:
            print(f"mlustre lfs: {_os_error(path, e)}", file=sys.stderr)
            status = 1
            continue
        except LfsError as e:
            print(f"mlustre lfs: {e}", file=sys.stderr)
            status = 1
            continue
        fid = fid_of_stat(st)
        print(f"{path}: {fid}" if len(args.paths) > 1 else fid)
    return status


def cmd_getname(args: argparse.Namespace) -> int:
    """Lustre's `lfs getname`: the client instance (FSNAME-ID) of each mount, the name
    its parameters carry (`lctl get_param llite.FSNAME-ID.stats`)."""
    from .. import registry

    if args.paths:
        try:
            mounts = [mount_of(p) for p in args.paths]
        except LfsError as e:
            print(f"mlustre lfs: {e}", file=sys.stderr)
            return 1
    else:
        mounts = mlustre_mounts()
        if not mounts:
            print("mlustre lfs: no mlustre filesystem is mounted", file=sys.stderr)
            return 1
    status = 0
    for m in mounts:
        info = registry.find_mount(m.mountpoint) or {}
        name = registry.client_instance(info)
        if name is None or not registry.pid_alive(info.get("pid")):
            print(f"mlustre lfs: {m.mountpoint}: its client is not running", file=sys.stderr)
            status = 1
            continue
        print(f"{name} {m.mountpoint}")
    return status


def join_mount_path(mnt: str, rel: bytes) -> bytes:
    base = os.fsencode(mnt).rstrip(b"/")
    return base + b"/" + rel if rel else (base or b"/")


def cmd_fid2path(args: argparse.Namespace) -> int:
    from ..protocol.fid import Fid, ino_of

    if not os.path.exists(args.mount):
        raise LfsError(f"{args.mount}: No such file or directory")
    m = mount_of(args.mount)
    inos = []
    for text in args.fids:
        try:
            inos.append((text, ino_of(Fid.parse(text))))
        except ValueError as e:
            raise LfsError(f"{e} (expected [0xSEQ:0xOID:0xVER])") from None

    cred = [os.geteuid(), os.getegid(), os.getgroups()]

    async def query(node: Any) -> list[tuple[str, bytes | int]]:
        from ..protocol.errors import RpcError

        out: list[tuple[str, bytes | int]] = []
        for text, ino in inos:
            try:
                out.append((text, await node.mdc.fid2path(cred, ino)))
            except RpcError as e:
                out.append((text, e.errno))
        return out

    async def run() -> list[tuple[str, bytes | int]]:
        return await _with_node(m.spec, query)

    foreign = foreign_network(m)
    if foreign is not None:
        raise foreign

    status = 0
    for text, result in _run_async(run):
        if isinstance(result, int):
            why = ("no such file (unknown FID, or not linked in the namespace)"
                   if result == errno.ENOENT else os.strerror(result))
            print(f"mlustre lfs: {text}: {why}", file=sys.stderr)
            status = 1
            continue
        sys.stdout.buffer.write(join_mount_path(m.mountpoint, result) + b"\n")
    sys.stdout.flush()
    return status


async def _check_fs(spec: str) -> list[tuple[str, str, str]]:
    """(name, nid, state) for the MGS and every target registered with it."""
    import trio

    from ..protocol import constants as C
    from ..protocol.nid import parse_spec
    from ..protocol.session import Session

    mgs_nids, fsname = parse_spec(spec)
    key = _key_for(spec)

    async def probe(nursery: trio.Nursery, name: str, nids: list[Any], opc: int,
                    disc: int | None) -> tuple[str, str]:
        try:
            with trio.fail_after(CONNECT_TIMEOUT * max(len(nids), 1) + 2):
                s = await Session.open(nursery, nids, target=name, connect_opc=opc,
                                       timeout=CONNECT_TIMEOUT, key=key)
        except trio.TooSlowError:
            return ",".join(map(str, nids)), "timed out"
        except Exception as e:  # ConnectionLost, RpcError: report, never raise
            return ",".join(map(str, nids)), f"inactive: {e}"
        if disc is not None:
            with trio.move_on_after(2):
                try:
                    await s.endpoint.call(disc, {}, timeout=2)
                except Exception:
                    pass
        await s.close()
        return str(s.nid), "active"

    rows: list[tuple[str, str, str]] = []
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(CONNECT_TIMEOUT * max(len(mgs_nids), 1) + 2):
                s = await Session.open(nursery, mgs_nids, target=f"{fsname}-MGS",
                                       connect_opc=C.MGS_CONNECT, timeout=CONNECT_TIMEOUT,
                                       key=key)
            try:
                config = (await s.call(C.MGS_CONFIG_READ, timeout=CONNECT_TIMEOUT)).body
            finally:
                await s.close()
        except Exception as e:
            rows.append((f"{fsname}-MGS-mgc", ",".join(map(str, mgs_nids)),
                         f"inactive: {e or 'timed out'}"))
            nursery.cancel_scope.cancel()
            return rows
        rows.append((f"{fsname}-MGS-mgc", str(s.nid), "active"))
        from ..protocol.nid import Nid

        targets = sorted(config.get("targets", []),
                         key=lambda t: (t["kind"] != "mdt", t["index"]))
        results: dict[int, tuple[str, str, str]] = {}

        async def one(i: int, t: dict[str, Any]) -> None:
            mdt = t["kind"] == "mdt"
            nid, state = await probe(
                nursery, t["name"], [Nid.parse(n) for n in t["nids"]],
                C.MDS_CONNECT if mdt else C.OST_CONNECT,
                C.MDS_DISCONNECT if mdt else C.OST_DISCONNECT)
            results[i] = (f"{t['name']}-{'mdc' if mdt else 'osc'}", nid, state)

        async with trio.open_nursery() as probes:
            for i, t in enumerate(targets):
                probes.start_soon(one, i, t)
        rows += [results[i] for i in sorted(results)]
        if not any(t["kind"] == "mdt" for t in targets):
            rows.append((f"{fsname}-MDT0000-mdc", "-", "inactive: not registered with the MGS"))
        nursery.cancel_scope.cancel()
    return rows


def cmd_check(args: argparse.Namespace) -> int:
    if args.what != "servers":
        raise LfsError(f"unknown check {args.what!r} (only: servers)")
    mounts = [mount_of(args.path)] if args.path else mlustre_mounts()
    if not mounts:
        raise LfsError("no mlustre filesystem is mounted")
    status = 0
    seen = set()
    for m in mounts:
        if m.spec in seen:
            continue
        seen.add(m.spec)
        foreign = foreign_network(m)
        if foreign is not None:
            print(f"mlustre lfs: {foreign}", file=sys.stderr)
            status = 1
            continue

        async def run(spec: str = m.spec) -> list[tuple[str, str, str]]:
            return await _check_fs(spec)

        try:
            rows = _run_async(run)
        except ValueError as e:
            raise LfsError(str(e)) from None
        sys.stdout.write(format_check(rows))
        if any(state != "active" for _, _, state in rows):
            status = 1
    return status


# ---------------------------------------------------------------- arguments

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sub = self.prog.removeprefix("mlustre lfs").strip()
        raise LfsError(f"{sub}: {message}" if sub else message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mlustre lfs", description="Lustre-like lfs for mlustre mounts.")
    sub = p.add_subparsers(dest="lfs_command", required=True, parser_class=_Parser)

    df = sub.add_parser("df", add_help=False, help="space and inodes per target")
    df.add_argument("--help", action="help", help="show this help")
    df.add_argument("-h", "--human-readable", dest="human", action="store_true",
                    help="sizes in K, M, G, T (1024-based)")
    df.add_argument("-i", "--inodes", action="store_true", help="inodes instead of blocks")
    df.add_argument("path", nargs="?", help="a path on the filesystem (default: every mount)")
    df.set_defaults(fn=cmd_df)

    gs = sub.add_parser("getstripe", help="a file's layout or a directory's default")
    only = gs.add_mutually_exclusive_group()
    only.add_argument("-c", "--stripe-count", dest="only", action="store_const",
                      const="stripe_count", help="only the stripe count")
    only.add_argument("-S", "--stripe-size", dest="only", action="store_const",
                      const="stripe_size", help="only the stripe size")
    only.add_argument("-i", "--stripe-index", dest="only", action="store_const",
                      const="stripe_offset", help="only the first OST (stripe offset)")
    gs.add_argument("paths", nargs="+", metavar="PATH")
    gs.set_defaults(fn=cmd_getstripe)

    ss = sub.add_parser("setstripe", help="set a directory's default or a new file's layout")
    ss.add_argument("-c", "--stripe-count", type=int, help="number of OSTs, -1 = all")
    ss.add_argument("-S", "--stripe-size", help="bytes per stripe, e.g. 1M, 64K")
    ss.add_argument("-i", "--stripe-index", type=int,
                    help="first OST, -1 = chosen by the MDT")
    ss.add_argument("path", metavar="PATH")
    ss.set_defaults(fn=cmd_setstripe)

    pf = sub.add_parser("path2fid", help="the FID of each path")
    pf.add_argument("paths", nargs="+", metavar="PATH")
    pf.set_defaults(fn=cmd_path2fid)

    gn = sub.add_parser("getname", help="the client instance (FSNAME-ID) of each mount")
    gn.add_argument("paths", nargs="*", metavar="MNT",
                    help="a mount point or a path on it (default: every mount)")
    gn.set_defaults(fn=cmd_getname)

    fp = sub.add_parser("fid2path", help="a path of each FID")
    fp.add_argument("mount", metavar="MOUNT")
    fp.add_argument("fids", nargs="+", metavar="FID")
    fp.set_defaults(fn=cmd_fid2path)

    ck = sub.add_parser("check", help="check servers: connect to every target")
    ck.add_argument("what", choices=["servers"])
    ck.add_argument("path", nargs="?", help="a path on the filesystem (default: every mount)")
    ck.set_defaults(fn=cmd_check)
    return p


def run_tool(prog: str, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Parse and run one tool command; an LfsError is one line on stderr and status 1."""
    try:
        args = parser.parse_args(argv)
        return args.fn(args)
    except LfsError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: list[str]) -> int:
    return run_tool("mlustre lfs", build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
