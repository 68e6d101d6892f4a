"""The CLI side of authentication: `mlustre keygen`, servers in secure mode, and key
file errors: one clear line and exit status 1, never a traceback."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "mlustre.cli"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess[str], mentions: str) -> None:
    assert r.returncode == 1, r
    assert mentions in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_keygen(tmp_path: Path) -> None:
    key = tmp_path / "fs.key"
    r = run("keygen", str(key))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = key.read_text()
    one_line_error(run("keygen", str(key)), "not overwriting")
    assert key.read_text() == first
    assert run("keygen", str(key), "--force").returncode == 0
    assert key.read_text() != first
    one_line_error(run("keygen", str(tmp_path / "no" / "dir" / "k")), "cannot create")


def _bad_keys(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    wide = tmp_path / "wide.key"
    assert run("keygen", str(wide)).returncode == 0
    wide.chmod(0o644)
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    return {"wide": (wide, "chmod 600"), "junk": (junk, "malformed"),
            "missing": (tmp_path / "none.key", "does not exist")}


@pytest.mark.parametrize("case", ["wide", "junk", "missing"])
def test_server_refuses_bad_key_file(tmp_path: Path, case: str) -> None:
    path, why = _bad_keys(tmp_path)[case]
    one_line_error(run("server", "mgs", "--fsname", "x", "--data", str(tmp_path / "mgs"),
                       "--key", str(path)), why)


def test_secure_server_without_key_refuses_to_start(tmp_path: Path) -> None:
    one_line_error(run("server", "mgs", "--fsname", "x", "--data", str(tmp_path / "mgs"),
                       "--secure"), "secure mode needs")


@pytest.mark.parametrize("case", ["wide", "missing"])
def test_mount_refuses_bad_key_file(tmp_path: Path, case: str) -> None:
    path, why = _bad_keys(tmp_path)[case]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    one_line_error(run("mount", "--key", str(path), "127.0.0.1:1:/x", str(mnt)), why)


def test_server_with_another_key_does_not_start(tmp_path: Path) -> None:
    """An OST whose key differs from the MGS's cannot register: it exits with one line
    instead of retrying for ever."""
    good, bad = tmp_path / "good.key", tmp_path / "bad.key"
    assert run("keygen", str(good)).returncode == 0
    assert run("keygen", str(bad)).returncode == 0
    mgs = subprocess.Popen([*CLI, "server", "mgs", "--fsname", "x", "--data",
                            str(tmp_path / "mgs"), "--key", str(good)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert mgs.stdout is not None
        line = mgs.stdout.readline()
        assert line.startswith("READY"), line
        nid = dict(f.split("=", 1) for f in line.split() if "=" in f)["nid"]
        r = run("server", "ost", "--fsname", "x", "--data", str(tmp_path / "ost"),
                "--mgs", nid, "--key", str(bad), timeout=30)
        assert r.returncode == 1
        assert "authentication with x-MGS at" in r.stderr and "wrong key" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        mgs.terminate()
        mgs.wait(timeout=30)


def test_keygen_privacy(tmp_path: Path) -> None:
    key = tmp_path / "fs.key"
    r = run("keygen", "--privacy", str(key))
    assert r.returncode == 0 and "privacy" in r.stdout, r
    assert key.read_text().split()[2] == "privacy"
    assert run("keygen", str(tmp_path / "i.key")).returncode == 0
    assert (tmp_path / "i.key").read_text().split()[2] == "integrity"


def test_cluster_key_mode(tmp_path: Path) -> None:
    """`up --privacy` writes the mode into a new DATA/auth.key; on a cluster whose key
    is integrity it refuses (never a silent integrity cluster); `--no-auth` cannot
    be private."""
    from mlustre.cli import CliError, _cluster_key
    from mlustre.protocol.keyfile import load_key

    (tmp_path / "p").mkdir()
    path = _cluster_key(tmp_path / "p", False, True)
    assert path is not None and load_key(path).privacy
    assert _cluster_key(tmp_path / "p", False) == path  # the file decides from then on
    (tmp_path / "i").mkdir()
    integrity = _cluster_key(tmp_path / "i", False)
    assert integrity is not None and not load_key(integrity).privacy
    with pytest.raises(CliError, match="integrity-mode key.*keygen --privacy --force"):
        _cluster_key(tmp_path / "i", False, True)
    with pytest.raises(CliError, match="drop --no-auth"):
        _cluster_key(tmp_path / "n", True, True)
