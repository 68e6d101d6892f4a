"""The shell phase of scripts/bench (mlustre/bench/shell.py) and how scripts/bench picks
what to run: the steps on a real local directory, their summary (the JSON line) and
table, and --only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlustre.bench.__main__ import split_only
from mlustre.bench.common import BenchError
from mlustre.bench.io import parse_args
from mlustre.bench.report import shell_table
from mlustre.bench.shell import STEPS, ShellInputs, json_line, phase_shell, shell_summary


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ShellInputs:
    inputs = ShellInputs("tiny", base=tmp_path_factory.mktemp("shellbench"))
    inputs.prepare()
    return inputs


def test_every_step_runs_and_is_checked(tiny: ShellInputs, tmp_path: Path) -> None:
    r = phase_shell(tmp_path, tiny, timeout=120, cold=False)
    assert list(r["steps"]) == list(STEPS)
    assert all(v > 0 for v in r["steps"].values())
    assert r["seconds"] == pytest.approx(sum(r["steps"].values()))
    assert r["entries"] > 100 and r["tar_bytes"] >= tiny.tar.stat().st_size // 2
    assert list(tmp_path.iterdir()) == []  # rm -rf took everything
    # made once: a second ShellInputs of the same place reuses them
    again = ShellInputs("tiny", base=tiny.dir.parent)
    mtime = tiny.tar.stat().st_mtime_ns
    again.prepare()
    assert tiny.tar.stat().st_mtime_ns == mtime


def test_a_failing_step_fails_the_phase_with_the_steps_so_far(tiny: ShellInputs,
                                                              tmp_path: Path) -> None:
    broken = ShellInputs("tiny", base=tiny.dir.parent)
    broken.git = tmp_path / "no-such-repo.git"
    with pytest.raises(BenchError) as e:
        phase_shell(tmp_path, broken, timeout=120, cold=False)
    assert "git_clone" in str(e.value)
    assert list(e.value.partial["steps"]) == ["untar", "cp_a", "ls_lR", "tar_c"]


def results(ml: dict | None, tm: dict | None) -> dict:
    targets = {}
    for name, ph in (("mlustre", ml), ("tmpfs", tm)):
        if ph is not None:
            targets[name] = {"phases": {"shell": ph}}
    return {"args": {"shell_scale": "small"}, "targets": targets}


def test_summary_ratios_and_table() -> None:
    steps_m = dict.fromkeys(STEPS, 2.0)
    steps_t = dict.fromkeys(STEPS, 0.5)
    s = shell_summary(results({"ok": True, "steps": steps_m, "seconds": 14.0},
                              {"ok": True, "steps": steps_t, "seconds": 3.5}))
    assert s["ratio_mlustre_tmpfs"] == {**dict.fromkeys(STEPS, 4.0), "total": 4.0}
    assert s["targets"]["mlustre"]["total"] == 14.0 and s["scale"] == "small"
    line = json.loads(json_line(s, True))
    assert line["phase"] == "shell" and line["ok"] is True
    rows = [r.split("|") for r in shell_table(s)[1].splitlines()[2:]]
    assert [r[0].strip() for r in rows] == [*STEPS, "total"]
    assert [c.strip() for c in rows[0][1:]] == ["2.00", "0.50", "4.00"]


def test_summary_of_a_failed_target_keeps_its_partial_steps() -> None:
    s = shell_summary(results({"ok": False, "error": "x", "partial": {"steps": {"untar": 3.0}}},
                              {"ok": True, "steps": dict.fromkeys(STEPS, 1.0), "seconds": 7.0}))
    assert s["targets"]["mlustre"] == {"ok": False, "steps": {"untar": 3.0}, "total": None}
    assert s["ratio_mlustre_tmpfs"] == {"untar": 3.0}
    table = shell_table(s)[1]
    assert "FAIL" in table.splitlines()[-1]


def test_only_selects_the_shell_phase() -> None:
    assert parse_args(["--only", "shell"]).benches == ["shell"]
    assert "shell" not in parse_args([]).benches  # (long: only when asked for)
    args = parse_args(["--only", "shell,tmpfs", "--shell-scale", "tiny"])
    assert args.only == ["tmpfs"] and args.shell_inputs.scale == "tiny"
    with pytest.raises(SystemExit):
        parse_args(["--shell-scale", "huge"])


def test_only_names_the_separate_benchmarks_too() -> None:
    assert split_only(["--size-mb", "8"]) == (["--size-mb", "8"], ["barrier", "recovery"])
    assert split_only(["--only", "shell", "--shell-scale", "small"]) == (
        ["--shell-scale", "small", "--only", "shell"], [])
    assert split_only(["--only=barrier"]) == (None, ["barrier"])
    assert split_only(["--only", "recovery,meta,barrier"]) == (
        ["--only", "meta"], ["barrier", "recovery"])
