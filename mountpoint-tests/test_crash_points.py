"""Crashes at named points (fail_loc `crash_before` / `crash_after`), as kill -9 at the
worst moment: the MDT or an OST dies on receiving an update, or after doing it but
before its reply leaves. The application call waits while the server is down, the
server is started again (`mlustre failover`), the client resends, and the call
completes exactly once: a mkdir whose reply was lost does not come back EEXIST, an
unlink does not come back ENOENT, written data is there."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time

import pytest
from mnthelpers import cli

from mlustre.registry import pid_alive

TIMEOUT = 240

# (name, target, fail_loc, setup, operation, check) — shell snippets run in the mount
SCENARIOS = [
    ("mkdir", "MDT0000", "crash_after:MDS_REINT:once", "",
     "os.mkdir('d')", "os.path.isdir('d')"),
    ("mkdir-lost-request", "MDT0000", "crash_before:MDS_REINT:once", "",
     "os.mkdir('d')", "os.path.isdir('d')"),
    ("create", "MDT0000", "crash_after:MDS_REINT:once", "",
     "os.close(os.open('f', os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))",
     "oct(os.stat('f').st_mode & 0o777) == '0o640'"),
    ("unlink", "MDT0000", "crash_after:MDS_REINT:once", "open('f', 'w').write('x')",
     "os.unlink('f')", "not os.path.exists('f')"),
    ("rename", "MDT0000", "crash_after:MDS_REINT:once", "open('a', 'w').write('x')",
     "os.rename('a', 'b')", "open('b').read() == 'x' and not os.path.exists('a')"),
    ("link", "MDT0000", "crash_after:MDS_REINT:once", "open('a', 'w').write('x')",
     "os.link('a', 'b')", "os.stat('a').st_nlink == 2"),
    ("symlink", "MDT0000", "crash_after:MDS_REINT:once", "",
     "os.symlink('target', 's')", "os.readlink('s') == 'target'"),
    ("chmod", "MDT0000", "crash_after:MDS_REINT:once", "open('f', 'w').write('x')",
     "os.chmod('f', 0o600)", "oct(os.stat('f').st_mode & 0o777) == '0o600'"),
    # A chmod of a file this client created is answered under its write-back lock; its
    # fsync sends it (md_writeback.py): the fsync waits for the MDT and completes.
    ("chmod-writeback", "MDT0000", "crash_after:MDS_REINT:once",
     "fd = os.open('f', os.O_CREAT | os.O_WRONLY); os.fsync(fd); os.close(fd)",
     "fd = os.open('f', os.O_WRONLY); os.fchmod(fd, 0o604); os.fsync(fd); os.close(fd)",
     "oct(os.stat('f').st_mode & 0o777) == '0o604'"),
    ("setxattr", "MDT0000", "crash_after:MDS_REINT:once", "open('f', 'w').write('x')",
     "os.setxattr('f', 'user.k', b'v', os.XATTR_CREATE)",
     "os.getxattr('f', 'user.k') == b'v'"),
    ("write+fsync", "OST0000", "crash_after:OST_WRITE:once", "",
     "fd = os.open('f', os.O_CREAT | os.O_WRONLY); os.write(fd, b'y' * 300000); "
     "os.fsync(fd); os.close(fd)", "open('f', 'rb').read() == b'y' * 300000"),
    ("truncate", "OST0000", "crash_after:OST_PUNCH:once",
     "open('f', 'wb').write(b'z' * 100000); os.sync()",
     "os.truncate('f', 10)", "open('f', 'rb').read() == b'z' * 10"),
]


# Files made without a write-back lock, so that the operation itself goes to the MDT.
NO_WRITEBACK = {"chmod"}


def server_pid(c, target: str) -> int:
    return next(s["pid"] for s in c.status()["servers"] if s["name"].endswith(target))


@pytest.mark.timeout(TIMEOUT)
def test_crash_points(cluster_factory):  # noqa: F811
    c = cluster_factory("--osts", "1", "--fsname", "cp" + secrets.token_hex(3))
    for name, target, loc, setup, op, check in SCENARIOS:
        d = c.mnt / name
        d.mkdir()
        wb = "0" if name in NO_WRITEBACK else "1"
        cli("lctl", "-m", c.mnt, "set_param", f"llite.*.attr_writeback={wb}").check()
        if setup:
            subprocess.run([sys.executable, "-c", f"import os; {setup}"], cwd=d, check=True)
        pid = server_pid(c, target)
        lctl = cli("lctl", "-m", c.mnt, "set_param", f"*.*{target}.fail_loc={loc}")
        lctl.check()
        proc = subprocess.Popen([sys.executable, "-c", f"import os; {op}"], cwd=d,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while pid_alive(pid):
                assert time.monotonic() < deadline, f"{name}: {target} did not crash"
                time.sleep(0.05)
            assert proc.poll() is None, f"{name}: the call ended while {target} was down"
            cli("failover", c.mnt, target).check()
            assert proc.wait(timeout=60) == 0, f"{name}: {proc.stderr.read()}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        ok = subprocess.run([sys.executable, "-c", f"import os, sys; sys.exit(not ({check}))"],
                            cwd=d)
        assert ok.returncode == 0, f"{name}: wrong state after the crash"
    c.remember_pids(c.status())
