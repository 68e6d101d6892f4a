"""Persistence across `mlustre down` / `mlustre up --data SAMEDIR`, and more
clients of one filesystem (`mlustre mount SPEC MNT2`)."""

from __future__ import annotations

import os
import signal

import pytest
from mnthelpers import (
    cli,
    is_mounted,
    make_world_dir,
    proc_starttime,
    sh,
    sh_ok,
    snapshot,
    wait_until,
)

POPULATE = r"""
mkdir -p dir/sub emptydir many
head -c 3000000 /dev/urandom > dir/random.bin
printf 'hello\n' > hello.txt
: > empty
ln hello.txt dir/hardlink
ln -s hello.txt sym
ln -s /nonexistent/dangling dangling
ln -s dir/sub dirlink
truncate -s 5M sparse && printf x | dd of=sparse bs=1 seek=4000000 conv=notrunc status=none
for i in $(seq 1 200); do echo "file $i" > many/f$i; done
chmod 600 dir/random.bin; chmod 751 dir; chmod 1777 emptydir; chmod 2755 dir/sub
chmod 4755 hello.txt
chown 65534:65534 dir/sub many/f7
setfattr -n user.color -v blue hello.txt
setfattr -n user.bin -v 0x00ff10 dir
setfattr -n user.empty dir/random.bin
touch -d @1000000000 empty
touch -m -d @1200000000 dir/random.bin
"""

MODIFY = r"""
echo appended >> hello.txt
mv many/f1 many/renamed
rm many/f2 dangling
head -c 1234567 /dev/urandom > dir/new.bin
chmod 640 dir/new.bin
setfattr -x user.color hello.txt
setfattr -n user.color -v red dir/hardlink
rmdir emptydir
mkdir newdir && ln dir/new.bin newdir/link
"""


def assert_all_dead(pids: dict[int, int], timeout: float = 15) -> None:
    def dead() -> bool:
        return all(proc_starttime(p) != t for p, t in pids.items())

    alive = (
        [] if wait_until(dead, timeout) else [p for p, t in pids.items() if proc_starttime(p) == t]
    )
    assert not alive, f"processes still running after `mlustre down`: {alive}"


@pytest.mark.timeout(300)
def test_data_and_metadata_survive_down_up(fresh_cluster):
    c = fresh_cluster
    sh_ok(POPULATE, cwd=c.mnt, timeout=180)
    before = snapshot(c.mnt)
    assert before["hello.txt"][5] == 2 and before["dir/hardlink"][5] == 2
    fsname = c.status()["fsname"]
    pids = dict(c.procs)

    c.down().check()
    assert not is_mounted(c.mnt), "still mounted after `mlustre down`"
    assert_all_dead(pids)

    c.up()
    assert c.status()["fsname"] == fsname
    assert snapshot(c.mnt) == before

    # modify after the restart, restart again: the changes persist too
    sh_ok(MODIFY, cwd=c.mnt, timeout=120)
    modified = snapshot(c.mnt)
    c.restart()
    assert snapshot(c.mnt) == modified


@pytest.mark.timeout(240)
def test_data_survives_up_on_a_new_mountpoint(fresh_cluster, base_tmp):
    c = fresh_cluster
    sh_ok("mkdir d && echo persistent > d/f && ln -s d/f l", cwd=c.mnt)
    before = snapshot(c.mnt)
    c.down().check()
    new_mnt = make_world_dir(base_tmp, "newmnt-")
    c.up(mnt=new_mnt)
    assert snapshot(new_mnt) == before


@pytest.mark.timeout(240)
def test_striped_file_survives_restart(fresh_cluster):
    c = fresh_cluster
    sh_ok(
        "mkdir striped && setfattr -n lustre.lov -v 'stripe_count=2 stripe_size=1048576' "
        "striped && head -c 5242887 /dev/urandom > striped/f",
        cwd=c.mnt,
    )
    lov = sh_ok("getfattr --only-values -n lustre.lov striped/f", cwd=c.mnt)
    assert "stripe_count=2" in lov, lov
    dir_lov = sh_ok("getfattr --only-values -n lustre.lov striped", cwd=c.mnt)
    before = snapshot(c.mnt)
    c.restart()
    assert snapshot(c.mnt) == before
    assert sh_ok("getfattr --only-values -n lustre.lov striped/f", cwd=c.mnt) == lov
    assert sh_ok("getfattr --only-values -n lustre.lov striped", cwd=c.mnt) == dir_lov
    # new files in that directory still get its default striping
    sh_ok("head -c 3000000 /dev/urandom > striped/g", cwd=c.mnt)
    assert "stripe_count=2" in sh_ok("getfattr --only-values -n lustre.lov striped/g", cwd=c.mnt)


@pytest.mark.timeout(240)
def test_down_unmounts_every_client_and_stops_servers(fresh_cluster, client2):
    c = fresh_cluster
    c.mount_client(client2).check()
    assert is_mounted(client2)
    status = c.status()
    listed = {e["mountpoint"] for e in status["clients"]}
    assert {str(c.mnt), str(client2)} <= listed, status["clients"]
    pids = dict(c.procs)
    assert len(pids) >= len(status["servers"]) + 2
    c.down().check()
    assert not is_mounted(c.mnt) and not is_mounted(client2)
    assert_all_dead(pids)


@pytest.mark.timeout(240)
def test_second_client_sees_same_tree_across_umount_and_mount(cluster, client2):
    shared = cluster.mnt / "shared"
    shared.mkdir()
    sh_ok(POPULATE, cwd=shared, timeout=180)
    expected = snapshot(shared)

    cluster.mount_client(client2).check()
    assert is_mounted(client2)
    assert snapshot(client2 / "shared") == expected

    res = cluster.umount_client(client2)
    res.check()
    assert not is_mounted(client2)
    assert sh_ok("ls -A", cwd=client2) == "", "mount point not empty after umount"

    cluster.mount_client(client2).check()
    assert snapshot(client2 / "shared") == expected
    # and the first client still sees it all too
    assert snapshot(shared) == expected


@pytest.mark.timeout(180)
def test_second_client_sees_changes_after_close(cluster, client2):
    cluster.mount_client(client2).check()
    one, two = cluster.mnt / "coherence", client2 / "coherence"
    sh_ok(f"mkdir {one}")

    # created and closed on client 1 -> visible on client 2 at once
    sh_ok(f"echo first version > {one}/f && mkdir {one}/d && echo inner > {one}/d/g")
    assert sh_ok(f"cat {two}/f {two}/d/g") == "first version\ninner\n"
    assert sh_ok(f"ls {two}").split() == ["d", "f"]

    # same-size overwrite on client 1 -> client 2's next open sees new data
    sh_ok(f"echo FIRST VERSION > {one}/f")
    assert sh_ok(f"cat {two}/f") == "FIRST VERSION\n"
    sh_ok(f"echo appended >> {one}/f")
    assert sh_ok(f"cat {two}/f") == "FIRST VERSION\nappended\n"
    assert sh_ok(f"stat -c %s {two}/f").strip() == str(len("FIRST VERSION\nappended\n"))

    # and the other way round
    sh_ok(f"head -c 2500000 /dev/urandom > {two}/big")
    sh_ok(f"cmp {one}/big {two}/big")

    # removal and rename: allow for kernel attribute/entry cache timeouts
    sh_ok(f"rm {one}/d/g && mv {one}/f {one}/f2")

    def gone() -> bool:
        return sh(f"test ! -e {two}/d/g && test ! -e {two}/f && test -f {two}/f2").rc == 0

    assert wait_until(gone, 5), sh(f"ls -la {two} {two}/d").describe()
    assert sh_ok(f"cat {two}/f2") == "FIRST VERSION\nappended\n"


@pytest.mark.timeout(60)
def test_status_lists_second_client(cluster, client2):
    cluster.mount_client(client2).check()
    status = cluster.status()
    clients = {e["mountpoint"]: e["pid"] for e in status["clients"]}
    assert str(client2) in clients, status
    assert proc_starttime(clients[str(client2)]) is not None
    # status works from the second mount point too
    res = cli("status", client2, "--json")
    res.check()


@pytest.mark.timeout(180)
def test_down_cleans_up_after_a_crashed_client(fresh_cluster):
    """A client killed with SIGKILL leaves a dead FUSE mount behind
    ("Transport endpoint is not connected"); `down` must still leave the
    mount point unmounted and every server stopped."""
    c = fresh_cluster
    sh_ok(f"echo before-crash > {c.mnt}/f")
    client_pid = next(e["pid"] for e in c.status()["clients"] if e["mountpoint"] == str(c.mnt))
    os.kill(client_pid, signal.SIGKILL)
    assert wait_until(lambda: proc_starttime(client_pid) is None, 10)
    pids = dict(c.procs)
    res = c.down()
    assert not is_mounted(c.mnt), "dead mount left behind by `mlustre down`\n" + res.describe()
    assert_all_dead(pids)
    res.check()
    # and the same filesystem comes back, data intact
    c.up()
    assert sh_ok(f"cat {c.mnt}/f") == "before-crash\n"
