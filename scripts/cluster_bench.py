#!/usr/bin/env python3
"""A season on a cluster against the local pool: N render jobs through carvis.batch.run (N
processes of this machine) and through carvis.cluster.run (a Dask LocalCluster of as many
single-thread worker processes), the same jobs and the same work function.

    .venv/bin/python scripts/cluster_bench.py [--jobs 6] [--frames 60] [--workers 1,2]
                                              [--repeat 1]

Prints, per worker count: the wall time of the batch on the local pool (its processes spawned
by the batch, as `render --jobs N` does) and on the LocalCluster (started before, as a running
cluster is; its start-up printed apart), their ratio (Dask's overhead), and how each scales
from the first worker count to the others; with --repeat R each is the best of R runs, local
and Dask in turn (a shared machine's other load makes single runs noisy). Every output is
checked complete (its frames).
Exit status 0 if every job of every run finished, else 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from carvis import batch, cluster, jobs
from carvis import profile as prof


def run_local(todo: list, options: jobs.RenderOptions, workers: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    outcomes = batch.run(todo, options, workers)
    return time.perf_counter() - t0, outcomes


def run_dask(todo: list, options: jobs.RenderOptions, workers: int) -> tuple[float, float, list]:
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40) as local, \
            Client(local) as client:
        client.wait_for_workers(workers)
        started = time.perf_counter() - t0
        t1 = time.perf_counter()
        outcomes = cluster.run(todo, options, client)
        return started, time.perf_counter() - t1, outcomes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=6, help="render jobs (synthetic clips)")
    ap.add_argument("--frames", type=int, default=60, help="frames per job")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each; the best is kept")
    ap.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    profile = prof.load(REPO / "models" / "default.yaml")
    options = jobs.RenderOptions(profile, REPO / "models" / "default.tflite")
    sources = [f"synthetic:frames={args.frames},seed={k},size=640x480" for k in range(args.jobs)]
    print(f"{args.jobs} jobs x {args.frames} frames (640x480 synthetic, default.tflite, MP4); "
          "wall seconds")
    ok, rows = True, []
    with tempfile.TemporaryDirectory(prefix="cluster_bench-") as tmp:
        for workers in counts:
            local = dask = start = float("inf")
            done: list = []
            for r in range(args.repeat):
                todo = batch.plan(sources, Path(tmp) / f"local{workers}-{r}")
                seconds, outcomes = run_local(todo, options, workers)
                local, done = min(local, seconds), done + outcomes
                todo = batch.plan(sources, Path(tmp) / f"dask{workers}-{r}")
                up, seconds, outcomes = run_dask(todo, options, workers)
                dask, start, done = min(dask, seconds), min(start, up), done + outcomes
            whole = [o for o in done if not o.error and o.frames == args.frames]
            ok &= len(whole) == 2 * args.jobs * args.repeat
            rows.append((workers, local, dask, start))
            print(f"{workers} worker{'s' * (workers != 1)}: local pool {local:6.2f}  "
                  f"LocalCluster {dask:6.2f} (+{start:.1f} to start)  "
                  f"Dask / local {dask / local:.2f}x  "
                  f"outputs whole: {len(whole)}/{2 * args.jobs * args.repeat}", flush=True)
    base = rows[0]
    for workers, local, dask, _ in rows[1:]:
        print(f"{base[0]} -> {workers} workers: local pool {base[1] / local:.2f}x faster, "
              f"LocalCluster {base[2] / dask:.2f}x faster")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
