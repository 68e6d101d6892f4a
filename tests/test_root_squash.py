"""Root squash on the MDT (mdt.*.root_squash, mdt.*.nosquash_nids): parsing, the
rule, and an MDT over the wire serving root as the squash uid unless its NID is
exempt; the setting survives a restart of the MDT."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import pytest
from wire_helpers import MDT_NAME, mdt_server, mdt_session, run, serving

from mlustre.protocol import constants as C
from mlustre.protocol.errors import RpcError
from mlustre.servers.squash import RootSquash, parse_nids, parse_squash

ROOT = [0, 0, [0]]
USER = [1000, 1000, []]

pytestmark = pytest.mark.usefixtures("quiet_server_logs")


def test_parsing_and_the_rule() -> None:
    assert parse_squash("65534:65534") == (65534, 65534)
    for bad in ("65534", "a:b", "-1:0", "1:2:3", f"{1 << 32}:0"):
        with pytest.raises(ValueError):
            parse_squash(bad)
    assert [str(n) for n in parse_nids("127.0.0.1, 10.0.0.0/8 192.168.1.7@tcp")] == [
        "127.0.0.1/32", "10.0.0.0/8", "192.168.1.7/32"]
    assert parse_nids("NONE") == [] and parse_nids("") == []
    with pytest.raises(ValueError):
        parse_nids("not-an-address")
    off = RootSquash()
    assert not off.enabled and off.apply(ROOT, "127.0.0.1:5") == ROOT
    on = RootSquash(65534, 65533, parse_nids("10.0.0.0/8"))
    assert on.apply(ROOT, "127.0.0.1:5") == [65534, 65533, []]
    assert on.apply(ROOT, "10.1.2.3:5") == ROOT  # exempt
    assert on.apply(USER, "127.0.0.1:5") == USER  # only root is squashed
    assert RootSquash.from_dict(on.to_dict()) == on


def test_mdt_squashes_root_unless_exempt(tmp_path: Path) -> None:
    async def main() -> None:
        server = mdt_server(tmp_path, root_squash="65534:65534")
        async with serving(server) as (nid, nursery):
            s = await mdt_session(nursery, nid)

            async def reint(op: int, cred: list, **fields: object) -> dict:
                reply = await s.call(C.MDS_REINT, {"op": op, "cred": cred, **fields})
                return reply.body

            # Root's own directory is not writable by the squashed root...
            with pytest.raises(RpcError) as e:
                await reint(C.REINT_MKDIR, ROOT, parent=1, name=b"d", mode=0o755)
            assert e.value.errno == errno.EACCES
            # ... a world-writable one is, and what root makes there is nobody's.
            server.squash.uid = server.squash.gid = 0  # (off for a moment)
            shared = (await reint(C.REINT_MKDIR, ROOT, parent=1, name=b"shared",
                                  mode=0o777))["attr"]
            secret = (await reint(C.REINT_CREATE, ROOT, parent=1,
                                  name=b"secret", mode=stat.S_IFREG | 0o600,
                                  rdev=0, exclusive=True))["attr"]
            tree = server.params()
            tree.set(f"mdt.{MDT_NAME}.root_squash", "65534:65534")
            made = (await reint(C.REINT_MKDIR, ROOT, parent=shared["ino"], name=b"mine",
                                mode=0o755))["attr"]
            assert (made["uid"], made["gid"]) == (65534, 65534)
            with pytest.raises(RpcError) as e:  # root's 0600 file: not for nobody
                await reint(C.REINT_OPEN, ROOT, ino=secret["ino"], flags=0)
            assert e.value.errno == errno.EACCES
            assert server.stats["root_squashed"] >= 3
            # This client's NID exempt: root is root again.
            tree.set(f"mdt.{MDT_NAME}.nosquash_nids", "127.0.0.0/8")
            assert (await reint(C.REINT_OPEN, ROOT, ino=secret["ino"], flags=0))["handle"]
            assert dict(tree.get(f"mdt.{MDT_NAME}.*squash*")) == {
                f"mdt.{MDT_NAME}.nosquash_nids": "127.0.0.0/8",
                f"mdt.{MDT_NAME}.root_squash": "65534:65534"}
            await s.close()
        # Kept with the storage: a restarted MDT squashes the same way.
        again = mdt_server(tmp_path)
        async with serving(again) as (nid, nursery):
            assert again.squash == server.squash

    run(main)


def test_bad_values_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        server = mdt_server(tmp_path)
        async with serving(server):
            tree = server.params()
            for name, value in (("root_squash", "nobody"), ("nosquash_nids", "x.y")):
                with pytest.raises(Exception) as e:
                    tree.set(f"mdt.{MDT_NAME}.{name}", value)
                assert getattr(e.value, "errno", None) == errno.EINVAL, e.value
            assert not server.squash.enabled

    run(main)
