"""lctl parameter trees and output, without servers or mounts."""

from __future__ import annotations

import errno

import pytest

from mlustre.params import (
    ParamError,
    ParamTree,
    format_param,
    parse_positive_float,
    parse_positive_int,
    render,
)
from mlustre.tools.lctl import LctlError, format_device, parse_assignment


def tree() -> tuple[ParamTree, dict]:
    state = {"interval": 1.0, "mb": 256}
    t = ParamTree()
    t.add("obdfilter.fs-OST0000.uuid", lambda: "fs-OST0000_UUID")
    t.add("obdfilter.fs-OST0000.commit_interval", lambda: state["interval"],
          lambda v: state.__setitem__("interval", parse_positive_float(v)))
    t.add("osc.fs-OST0000-osc-ab.max_dirty_mb", lambda: state["mb"],
          lambda v: state.__setitem__("mb", parse_positive_int(v)))
    t.add("osc.fs-OST0001-osc-ab.max_dirty_mb", lambda: state["mb"],
          lambda v: state.__setitem__("mb", parse_positive_int(v)))
    t.add("osc.fs-OST0000-osc-ab.import", lambda: {"state": "FULL", "history": [[1, "FULL"]]})
    return t, state


def test_glob_get_and_list():
    t, _ = tree()
    assert [n for n, _ in t.get("osc.*.max_dirty_mb")] == [
        "osc.fs-OST0000-osc-ab.max_dirty_mb", "osc.fs-OST0001-osc-ab.max_dirty_mb"]
    assert t.list("obdfilter.*") == [["obdfilter.fs-OST0000.commit_interval", True],
                                     ["obdfilter.fs-OST0000.uuid", False]]
    assert t.get("obdfilter/fs-OST0000/uuid") == [["obdfilter.fs-OST0000.uuid",
                                                   "fs-OST0000_UUID"]]
    assert t.list("nothing.*") == []


def test_set_takes_effect_and_errors():
    t, state = tree()
    assert t.set("osc.*.max_dirty_mb", "64") == [["osc.fs-OST0000-osc-ab.max_dirty_mb", 64],
                                                 ["osc.fs-OST0001-osc-ab.max_dirty_mb", 64]]
    assert state["mb"] == 64
    t.set("obdfilter.*.commit_interval", "0.25")
    assert state["interval"] == 0.25
    for name, value, err in [("nope", "1", errno.ENOENT),
                             ("obdfilter.*.uuid", "x", errno.EPERM),
                             ("obdfilter.*.commit_interval", "abc", errno.EINVAL),
                             ("obdfilter.*.commit_interval", "0", errno.EINVAL),
                             ("obdfilter.*.commit_interval", "inf", errno.EINVAL),
                             ("osc.*.max_dirty_mb", "-1", errno.EINVAL),
                             ("osc.*.max_dirty_mb", "1.5", errno.EINVAL)]:
        with pytest.raises(ParamError) as e:
            t.set(name, value)
        assert e.value.errno == err, (name, value)
    assert state == {"interval": 0.25, "mb": 64}


@pytest.mark.parametrize("body", [
    None, [], {}, {"op": "drop"}, {"op": "get"}, {"op": "get", "pattern": 5},
    {"op": "get", "pattern": ""}, {"op": "set", "name": "osc.*.max_dirty_mb"},
    {"op": "set", "name": "osc.*.max_dirty_mb", "value": 64},
    {"op": "list", "pattern": ["*"]},
])
def test_handle_rejects_bad_requests(body):
    t, _ = tree()
    with pytest.raises(ParamError) as e:
        t.handle(body)
    assert e.value.errno == errno.EINVAL


def test_handle_ops():
    t, _ = tree()
    assert t.handle({"op": "get", "pattern": "*.uuid"}) == {
        "params": [["obdfilter.fs-OST0000.uuid", "fs-OST0000_UUID"]]}
    assert t.handle({"op": "set", "name": "osc.fs-OST0000-osc-ab.max_dirty_mb",
                     "value": "32"})["params"][0][1] == 32
    with pytest.raises(ParamError) as e:
        t.handle({"op": "get", "pattern": "x.*"})
    assert e.value.errno == errno.ENOENT


def test_format_param():
    assert format_param("a.b.c", 64) == "a.b.c=64"
    assert format_param("a.b.c", 64, values_only=True) == "64"
    assert format_param("a.b.c", 2.5) == "a.b.c=2.5"
    assert format_param("a.b.c", 1.0) == "a.b.c=1"
    assert format_param("a.b.c", ["x", "y"]) == "a.b.c=\nx\ny"
    assert format_param("a.b.c", []) == "a.b.c="
    imp = {"state": "FULL", "history": [[1, "CONNECTING"], [2, "FULL"]]}
    assert format_param("mdc.x.import", imp) == (
        "mdc.x.import=\nstate: FULL\nhistory:\n    1, CONNECTING\n    2, FULL")
    assert format_param("mdc.x.import", imp, values_only=True).startswith("state: FULL\n")
    assert render({"a": {"b": 1}}) == ["a:", "    b: 1"]
    assert render(True) == ["1"]


def test_assignment_and_device_line():
    assert parse_assignment("osc.*.max_dirty_mb=64") == ("osc.*.max_dirty_mb", "64")
    assert parse_assignment("a.b=x=y") == ("a.b", "x=y")
    for bad in ("osc.*.max_dirty_mb", "=5"):
        with pytest.raises(LctlError):
            parse_assignment(bad)
    assert format_device(0, "mgc", "MGC127.0.0.1:1", "u", 1) == "  0 UP mgc MGC127.0.0.1:1 u 1"


def test_target_params_without_network(tmp_path):
    from mlustre.servers.ost import OstServer

    srv = OstServer("fs", 0, str(tmp_path / "ost0"), mgs=[])
    t = srv.params()
    names = [n for n, _ in t.list("obdfilter.fs-OST0000.*")]
    for leaf in ("uuid", "instance", "last_transno", "last_committed", "commit_interval",
                 "num_exports", "exports", "stats"):
        assert f"obdfilter.fs-OST0000.{leaf}" in names
    srv.count("req.OST_WRITE", 3)
    stats = t.get("*.stats")[0][1]
    assert any(line.split()[:2] == ["req.OST_WRITE", "3"] for line in stats)
    t.set("obdfilter.fs-OST0000.commit_interval", "0.5")
    assert srv.commit_interval == 0.5
    with pytest.raises(ParamError):
        t.set("obdfilter.fs-OST0000.num_exports", "3")
