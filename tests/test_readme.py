"""The README runnable line by line: every command block, as written, in a fresh clone."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_DATA


@pytest.mark.slow
def test_every_readme_block_runs_in_a_fresh_clone():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a checkout to clone")
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the README's examples use {SHARED_DATA} (../shared/data beside the clone)")
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "readme_check.py")],
                       check=False, capture_output=True, text=True, timeout=1500)
    failed = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL")]
    assert r.returncode == 0 and not failed, r.stdout[-6000:]
    assert "readme: " in r.stdout and " 0 failed" in r.stdout.splitlines()[-1]
