"""test_docs_paths.py - the docs name only files that exist.

Modules move (this project's structure changes in steps); a README or design note that
still sends a reader to a file that is gone is worse than none. Every file-like name in
README.md and docs/*.md (`name.py`, `dir/name.py`, `scripts/name`, `*.md`) must match a
file of the repository: a bare name any file of that name, a path any file whose path
ends with it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A word ending in a source or doc suffix, or a scripts/ entry.
NAME = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-]+\.(?:py|md|toml|sh)|scripts/[\w-]+)(?![\w/-])")
# Names of files the docs speak of that live outside the repository (on a cluster's
# data directory, in Lustre's sources, on a user's machine; the peer filesystems'
# benchmark beside the worktrees).
ELSEWHERE = {"recovery.json", "config.json", "mdt.json", "squash.json", "mdt.sqlite",
             "shellbench.sh", "microbench.py", "peers.sh"}


def repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def missing_names(text: str, files: list[str]) -> list[str]:
    names = set(NAME.findall(text)) - ELSEWHERE
    return sorted(n for n in names
                  if not any(f == n or f.endswith("/" + n) for f in files))


def test_docs_name_only_files_that_exist() -> None:
    files = repo_files()
    missing = {str(d.relative_to(ROOT)): m for d in DOCS
               if (m := missing_names(d.read_text(), files))}
    assert missing == {}


def test_the_check_finds_a_missing_file() -> None:
    files = ["mlustre/servers/target.py", "scripts/test", "docs/recovery.md"]
    text = ("`servers/target.py` and target.py, scripts/test, recovery.md; "
            "servers/gone.py and scripts/nothing; a URL like lustre.org/x.html")
    assert missing_names(text, files) == ["scripts/nothing", "servers/gone.py"]
