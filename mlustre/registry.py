"""registry.py - where the CLI finds clusters and mounts on this machine.

Each client process records its mount in the state directory (/run/mlustre for
root, else $XDG_RUNTIME_DIR/mlustre or /tmp/mlustre-UID); a cluster started
with `mlustre up` records its servers in DATA/cluster.json and its first mount
point points to it, so `mlustre status|down MNT` need no other bookkeeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .localcluster import mounts
from .localcluster.processes import pid_alive  # noqa: F401  (the CLI's registry.pid_alive)


def state_dir() -> Path:
    if os.geteuid() == 0:
        base = Path("/run/mlustre")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "mlustre"
    else:
        base = Path(f"/tmp/mlustre-{os.getuid()}")
    (base / "mounts").mkdir(parents=True, exist_ok=True)
    return base


def _key(mountpoint: str | os.PathLike[str]) -> str:
    return _key_of_real(os.path.realpath(mountpoint))


def _key_of_real(real: str | os.PathLike[str]) -> str:
    return hashlib.sha1(os.fsencode(real)).hexdigest()[:16]


def mount_file(mountpoint: str | os.PathLike[str]) -> Path:
    return state_dir() / "mounts" / f"{_key(mountpoint)}.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def client_instance_id(uuid: str) -> str:
    """The id that names a client's parameters (llite.FSNAME-ID, mdc.T-mdc-ID, ...)."""
    return uuid.replace("-", "")[:16]


def client_instance(info: dict[str, Any]) -> str | None:
    """FSNAME-ID of the client a mount record describes (`lfs getname`)."""
    if not info.get("fsname") or not info.get("uuid"):
        return None
    return f"{info['fsname']}-{client_instance_id(info['uuid'])}"


def register_mount(mountpoint: str, info: dict[str, Any]) -> None:
    """Record a mount; mountpoint must already be a real path (it may be mounted now)."""
    write_json(state_dir() / "mounts" / f"{_key_of_real(mountpoint)}.json",
               {"mountpoint": mountpoint, **info})


def unregister_mount(mountpoint: str, pid: int | None = None, *, real: bool = False) -> None:
    f = (state_dir() / "mounts" / f"{_key_of_real(mountpoint)}.json") if real \
        else mount_file(mountpoint)
    try:
        if pid is not None and json.loads(f.read_text()).get("pid") != pid:
            return  # another client mounted here since
        f.unlink()
    except (FileNotFoundError, json.JSONDecodeError):
        pass


def find_mount(mountpoint: str) -> dict[str, Any] | None:
    try:
        return json.loads(mount_file(mountpoint).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def cluster_file(spec: str) -> Path:
    (state_dir() / "clusters").mkdir(exist_ok=True)
    return state_dir() / "clusters" / f"{hashlib.sha1(spec.encode()).hexdigest()[:16]}.json"


def register_cluster(spec: str, data_dir: str, key_file: str | None = None) -> None:
    """Remember which local cluster serves spec (and its key file, if it is secure), for
    clients mounted later by spec and for the tools."""
    write_json(cluster_file(spec), {"spec": spec, "data": data_dir, "key": key_file})
    prune_clusters()


def prune_clusters() -> int:
    """Forget clusters whose data directory is gone (removed by hand or by a test), so
    the records do not pile up and the tools do not read each of them every time."""
    gone = 0
    for f in (state_dir() / "clusters").glob("*.json"):
        try:
            data = json.loads(f.read_text()).get("data")
        except (OSError, json.JSONDecodeError):
            data = None
        if not data or not (Path(data) / "cluster.json").exists():
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                gone += 1
    return gone


def find_cluster_data(spec: str) -> str | None:
    try:
        return json.loads(cluster_file(spec).read_text()).get("data")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def key_file_for_spec(spec: str) -> str | None:
    """The key file of the filesystem at spec as this machine knows it: that of the
    local cluster serving it, else that of a client that mounted it with one."""
    try:
        key = json.loads(cluster_file(spec).read_text()).get("key")
    except (FileNotFoundError, json.JSONDecodeError):
        key = None
    if key:
        return str(key)
    for m in all_mounts():
        if m.get("spec") == spec and m.get("key"):
            return str(m["key"])
    return None


def key_for_spec(spec: str) -> bytes | None:
    """The key the tools use to talk to spec's servers (None: no key known, so the
    filesystem is taken to be insecure). KeyFileError if the file is unusable."""
    from .protocol.keyfile import load_key

    path = key_file_for_spec(spec)
    return load_key(path) if path else None


def all_mounts() -> list[dict[str, Any]]:
    out = []
    for f in sorted((state_dir() / "mounts").glob("*.json")):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def is_mounted(mountpoint: str) -> bool:
    """From the mount table, never touching the (maybe hung) mount point itself."""
    return mounts.is_mounted(mountpoint, real=True)
