"""The machine-wide registry forgets local clusters whose data directory is gone."""

from __future__ import annotations

import json

import pytest

from mlustre import registry


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "state_dir", lambda: _mkdirs(tmp_path / "state"))
    return tmp_path / "state"


def _mkdirs(p):
    (p / "mounts").mkdir(parents=True, exist_ok=True)
    return p


def test_registering_a_cluster_forgets_those_whose_data_is_gone(state, tmp_path):
    live, gone = tmp_path / "live", tmp_path / "gone"
    for d in (live, gone):
        d.mkdir()
        (d / "cluster.json").write_text(json.dumps({"spec": str(d)}))
    registry.register_cluster("127.0.0.1:1:/old", str(gone))
    (state / "clusters" / "junk.json").write_text("{not json")
    (gone / "cluster.json").unlink()
    gone.rmdir()
    registry.register_cluster("127.0.0.1:2:/new", str(live))
    names = sorted(p.name for p in (state / "clusters").glob("*.json"))
    assert names == [registry.cluster_file("127.0.0.1:2:/new").name]
    assert registry.find_cluster_data("127.0.0.1:2:/new") == str(live)
    assert registry.find_cluster_data("127.0.0.1:1:/old") is None
