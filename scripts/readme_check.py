#!/usr/bin/env python3
"""Run every command block of the README, as written, in a fresh clone; fail on any non-zero
exit or traceback.

    python3 scripts/readme_check.py            # clone HEAD into a temporary folder, run all
    python3 scripts/readme_check.py --keep     # keep the clone (its path is printed)
    python3 scripts/readme_check.py --list     # what would run, what is skipped and why

A fenced ```bash block runs as one bash script (set -e), in the clone's root, with the clone's
shared/ folder beside it as ../shared (a link to this checkout's). An HTML comment on the line
before a block steers it:

    <!-- check: skip: needs a camera -->        not run; the reason is printed
    <!-- check: run 15s -->                     a server: runs for 15 s, then Ctrl-C (SIGINT);
                                                its exit status after SIGINT must be 0 or 130
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = re.compile(r"<!--\s*check:\s*(skip|run)\s*:?\s*(.*?)\s*-->")


@dataclass
class Block:
    """One command block of the README and what the check does with it."""

    line: int
    script: str
    skip: str | None = None
    run_for: float | None = None

    def title(self) -> str:
        first = next((ln for ln in self.script.splitlines() if ln.strip()
                      and not ln.lstrip().startswith("#")), "")
        return f"README.md:{self.line}: {first.strip()[:90]}"


def blocks(readme: Path) -> list[Block]:
    """The README's ```bash blocks with their check: marks."""
    lines = readme.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() in ("```bash", "```sh"):
            start = i
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            block = Block(start + 1, "\n".join(body))
            mark = MARK.search(lines[start - 1]) if start > 0 else None
            if mark and mark.group(1) == "skip":
                block.skip = mark.group(2) or "marked skip"
            elif mark and mark.group(1) == "run":
                block.run_for = float(mark.group(2).rstrip("s") or 10)
            found.append(block)
        i += 1
    return found


def run_block(block: Block, cwd: Path, env: dict[str, str], timeout: float) -> tuple[bool, str]:
    """Run one block; (passed, why not / its tail)."""
    script = "set -euo pipefail\n" + block.script
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        if block.run_for is not None:
            try:
                out, _ = proc.communicate(timeout=block.run_for)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGINT)
                out, _ = proc.communicate(timeout=30)
            ok_codes = (0, 130)
        else:
            out, _ = proc.communicate(timeout=timeout)
            ok_codes = (0,)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return False, f"timed out after {timeout:.0f} s\n{out[-2000:]}"
    tail = out[-2000:]
    if "Traceback (most recent call last)" in out:
        return False, f"a traceback:\n{tail}"
    if proc.returncode not in ok_codes:
        return False, f"exit status {proc.returncode}:\n{tail}"
    return True, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the clone")
    parser.add_argument("--list", action="store_true", help="only list the blocks")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per block")
    args = parser.parse_args()
    # The blocks get Ctrl-C as from a terminal even when this runs in the background (where
    # SIGINT comes in ignored, and a server block would never stop).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    found = blocks(REPO / "README.md")
    if args.list:
        for b in found:
            what = f"skip ({b.skip})" if b.skip else (f"run {b.run_for:g} s" if b.run_for
                                                       else "run")
            print(f"{what:>40}  {b.title()}")
        return 0
    top = Path(tempfile.mkdtemp(prefix="carvis-readme-"))
    clone = top / "carvis"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (top / "shared").symlink_to(shared)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if ".venv" not in p)
    env["CARVIS_CACHE"] = str(top / "cache")
    failed = 0
    print(f"readme check: {len(found)} blocks in a fresh clone at {clone}", flush=True)
    for b in found:
        if b.skip:
            print(f"SKIP  {b.title()}  ({b.skip})", flush=True)
            continue
        t0 = time.monotonic()
        ok, detail = run_block(b, clone, env, args.timeout)
        print(f"{'ok  ' if ok else 'FAIL'}  {b.title()}  ({time.monotonic() - t0:.0f} s)",
              flush=True)
        if not ok:
            failed += 1
            print("      " + detail.replace("\n", "\n      "), flush=True)
    if args.keep:
        print(f"clone kept at {clone}")
    else:
        shutil.rmtree(top, ignore_errors=True)
    ran = sum(1 for b in found if not b.skip)
    print(f"readme: {ran - failed} passed, {failed} failed, "
          f"{len(found) - ran} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
