"""The project's files describe the product as it is, not the story of how it was made.

Which bug this catches: a page, comment, docstring, result note or test that speaks of a work
session ("the fifteenth s...ing's model") instead of a model version or a date.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORD = "sit" + "ting"  # spelled in two parts so that this file does not match itself


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = []
    for name in out.decode().split("\0"):
        p = ROOT / name
        if name and p.is_file() and p.stat().st_size < 5_000_000:
            head = p.read_bytes()[:4096]
            if b"\0" not in head:  # text, not an image, a model or an archive
                files.append(p)
    return files


def test_no_tracked_text_file_tells_the_story_of_the_work_sessions():
    hits = []
    for p in _tracked_text_files():
        text = p.read_text(encoding="utf-8", errors="replace").lower()
        if WORD in text:
            hits.append(f"{p.relative_to(ROOT)} ({text.count(WORD)})")
    assert not hits, "say 'model version', 'training run' or a date instead:\n" + "\n".join(hits)
