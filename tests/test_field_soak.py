"""The soak of issue 13 in CI: two minutes live with 1,000 viewers coming and going, a camera
that drops out, settings changes; RSS, fds and threads flat (scripts/soak.py decides)."""

from __future__ import annotations

import json
import subprocess
import sys

import fakes
import pytest


@pytest.mark.slow
def test_two_minutes_of_churn_outages_and_changes_leave_nothing_behind():
    done = subprocess.run([sys.executable, str(fakes.REPO / "scripts" / "soak.py"),
                           "--minutes", "2", "--viewers", "1000", "--json"],
                          capture_output=True, text=True, timeout=400, check=False)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    print(summary)
    assert summary["viewers_started"] == 1000 and summary["viewers_total"] >= 700
    assert summary["source_losses"] >= 2 and summary["reconnects"] == summary["source_losses"]
    assert summary["fps_out"] >= 25 and summary["http"]["errors"] == 0
    assert summary["ok"] and done.returncode == 0, summary
