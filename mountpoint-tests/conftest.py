"""Fixtures for tests on real mlustre mounts.

`cluster` (one per test module) and `fresh_cluster` (one per test) run
`mlustre up` on fresh directories and always tear everything down: `mlustre
down`, then fusermount3 -u / -uz if the mount is still in /proc/mounts, then
SIGTERM/SIGKILL of the server and client PIDs that `status --json` listed.
When a test fails, the tail of the cluster's DATA/**/*.log files is attached
to its report. Should a whole session die without teardown (pytest-timeout in
thread mode exits at once), the next session reaps it from the PIDs it
recorded (see mnthelpers.reap_stale).

Environment: MLUSTRE_CMD overrides the CLI command line (default: the
`mlustre` script next to sys.executable); MLUSTRE_TEST_TMPDIR is where mount
points and data go (default /tmp; must be traversable by uid 65534).
MLUSTRE_TEST_MOUNT=MNT makes `cluster` an existing mlustre mount instead of a new
cluster (for tests that only use the mount: test_shell.py, test_differential.py),
so scripts/failover-soak can run them while servers fail over.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mnthelpers import (  # noqa: E402
    ACTIVE,
    BASE_PREFIX,
    Cluster,
    claim_base,
    log_tail,
    make_world_dir,
    mounts_under,
    reap_stale,
    remove_tree_if_unmounted,
)


def _fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


def _tmp_parent() -> str:
    return os.environ.get("MLUSTRE_TEST_TMPDIR", "/tmp")


@pytest.fixture(scope="session", autouse=True)
def _require_fuse():
    """Skip everything without FUSE; clean up after dead earlier sessions."""
    reason = _fuse_missing()
    if reason:
        pytest.skip(f"real-mount tests need FUSE: {reason}")
    for note in reap_stale(_tmp_parent()):
        warnings.warn(note, stacklevel=1)


@pytest.fixture(scope="session")
def base_tmp():
    """World-traversable scratch root (pytest's own tmp dirs are 0700, which
    would hide the mounts from uid 65534)."""
    base = make_world_dir(_tmp_parent(), BASE_PREFIX)
    claim_base(base)
    yield base
    leftover = mounts_under(base)
    if leftover:
        warnings.warn(f"mounts still present under {base}: {leftover}", stacklevel=1)
    else:
        remove_tree_if_unmounted(base)


def _cluster_lifetime(base: Path, args: list[str]):
    c = Cluster.create(base, args)
    try:
        try:
            c.up()
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- cluster logs ---\n{log_tail(c.data)}") from None
        yield c
    finally:
        problems = c.teardown()
        for p in problems:
            warnings.warn(f"cluster teardown ({c.mnt}): {p}", stacklevel=1)
        remove_tree_if_unmounted(c.data.parent)  # the cl-* directory of Cluster.create


class ExistingMount:
    """An mlustre mount the tests did not start (MLUSTRE_TEST_MOUNT): only `mnt` and
    `spec`; nothing is started or stopped."""

    def __init__(self, mnt: Path) -> None:
        from mlustre import registry

        info = registry.find_mount(str(mnt))
        if info is None:
            raise pytest.UsageError(f"MLUSTRE_TEST_MOUNT={mnt} is not an mlustre mount")
        self.mnt = mnt
        self.spec = info["spec"]


@pytest.fixture(scope="module")
def cluster(base_tmp):
    """A 2-OST cluster shared by the tests of one module (or MLUSTRE_TEST_MOUNT)."""
    existing = os.environ.get("MLUSTRE_TEST_MOUNT")
    if existing:
        yield ExistingMount(Path(existing).resolve())
        return
    yield from _cluster_lifetime(base_tmp, ["--osts", "2"])


@pytest.fixture
def fresh_cluster(base_tmp):
    """A 2-OST cluster of its own, for tests that stop or restart it."""
    yield from _cluster_lifetime(base_tmp, ["--osts", "2"])


@pytest.fixture
def cluster_factory(base_tmp):
    """Start clusters of their own (`make(*up_args)`); every one is torn down at
    the end (`mlustre down`, fusermount3 -u/-uz, SIGTERM/SIGKILL by PID), dead
    client mounts included."""
    made: list[Cluster] = []

    def make(*args: str) -> Cluster:
        c = Cluster.create(base_tmp, list(args))
        made.append(c)
        try:
            c.up()
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- cluster logs ---\n{log_tail(c.data)}") from None
        return c

    yield make
    for c in made:
        for problem in c.teardown():
            warnings.warn(f"cluster teardown ({c.mnt}): {problem}", stacklevel=1)
        remove_tree_if_unmounted(c.data.parent)


@pytest.fixture
def client2(request, base_tmp):
    """An empty mount point for a second client of the test's cluster;
    whatever is mounted there is unmounted at the end."""
    cluster = request.getfixturevalue(
        "fresh_cluster" if "fresh_cluster" in request.fixturenames else "cluster"
    )
    mnt2 = make_world_dir(base_tmp, "client2-")
    yield mnt2
    cluster.cleanup_client(mnt2)
    remove_tree_if_unmounted(mnt2)


@pytest.fixture
def workdir(request, cluster):
    """A fresh directory on the module's mount, named after the test."""
    name = request.node.name.replace("/", "_").replace("[", "_").replace("]", "")[:100]
    path = cluster.mnt / name
    path.mkdir()
    path.chmod(0o755)
    return path


@pytest.fixture
def mnt_b(cluster, client2) -> Path:
    """Client B: a second client process of the module's cluster."""
    cluster.mount_client(client2).check()
    return client2


@pytest.fixture
def ab(cluster, workdir, mnt_b) -> tuple[Path, Path]:
    """The test's directory as seen through client A (the cluster's mount) and B."""
    return workdir, mnt_b / workdir.relative_to(cluster.mnt)


@pytest.fixture
def scratch(base_tmp):
    """A local (not mlustre) world-traversable scratch directory."""
    path = make_world_dir(base_tmp, "local-")
    yield path
    remove_tree_if_unmounted(path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and ACTIVE:
        for c in ACTIVE:
            rep.sections.append((f"mlustre logs ({c.data})", c.logs()))
