"""Benchmark: studies per minute through one worker vs two workers (scale-out, real servers).

For each configuration in the same run, a fresh PostgreSQL database and a fresh Redis
(``tests/services.py``: Debian's servers on loopback), ``aircon serve --role receiver`` and N
``aircon worker`` processes sharing a spool (``tests/cluster.py``), and a receiving node in this
process as the planning system. Once every worker has its model warm, ``--senders`` dcmtk
``storescu`` processes send ``--studies`` phantom studies (24 MR slices each) at once; the time
runs from the first instance sent to the last RTSTRUCT received by the node. Every study must
end with one job, done and run once, and exactly one RTSTRUCT at the node (else exit 1).

The model is the bundled nnU-Net ``pelvis-demo`` (what bounds a GPU worker), with
``segmentation.threads`` 1 per worker by default; ``--model quick`` runs the test harness's
python model (a threshold after ``--model-seconds`` of sleep: little CPU, so the ratio shows
the queue, the receiver and the quiet time rather than the cores).

What bounds the ratio on 2 cores: a worker's nnU-Net inference is CPU work (one thread each),
and the receiver (association threads, assembly, study checks, RTSTRUCT deliveries),
PostgreSQL, Redis, storescu and the node share the same two cores, as do whatever else runs on
the machine. Two workers can at best use both cores for inference, and only while nothing else
runs. The bench prints the CPU seconds each process used during the timed window
(``/proc/<pid>/stat``: utime + stime of the process and its children) and the machine's busy
CPU seconds (``/proc/stat``), so the ceiling ``2 cores / CPU seconds per study`` can be set
against the rate measured. The window also holds what a second worker does not shorten: the
sending itself (the receiver takes every instance on the same cores, CPU-bound) and the last
study's quiet time (``series_quiet_s`` 2 s). On the small phantom (96 x 96 x 24) nnU-Net's
inference is well under a second a job, so a worker's share per study (read, infer, build the
RTSTRUCT) is of the order of the receiver's, and the second worker mostly shortens the tail
after the last instance is sent. On a GPU host the workers' inference leaves the CPU, and the
ratio is bounded by the GPUs and by the receiver instead.

Run: ``python bench/throughput.py [--studies 20] [--model nnunet|quick] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale_run import (  # noqa: E402
    MODELS,
    ScaleRun,
    machine_busy_s,
    make_studies,
    postmaster_pid,
    tree_cpu_s,
)
from gateway.job import stage_timings  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.services import PostgresServer  # noqa: E402

CORES = os.cpu_count() or 1


def _cpu(run: ScaleRun, pg_pid: int) -> dict[str, float]:
    assert run.cluster.receiver.proc is not None and run.redis.proc is not None
    parts = {"receiver": tree_cpu_s(run.cluster.receiver.proc.pid)}
    for worker in run.workers:
        parts[worker.hostname] = tree_cpu_s(worker.pid)
    parts["postgresql"] = tree_cpu_s(pg_pid)
    parts["redis"] = tree_cpu_s(run.redis.proc.pid)
    # This process: the receiving node's threads, the polling, and the storescu it reaped.
    times = os.times()
    parts["bench+node+storescu"] = sum(times[:4])
    return parts


def _one(
    root: Path, pg: PostgresServer, workers: int, studies: list, args: argparse.Namespace
) -> float:
    run = ScaleRun(
        root,
        pg,
        workers=workers,
        model=MODELS[args.model],
        threads=args.threads,
        model_seconds=args.model_seconds,
    )
    label = f"{workers} worker{'s' if workers > 1 else ''}"
    try:
        run.start()
        pg_pid = postmaster_pid(pg)
        cpu0, busy0 = _cpu(run, pg_pid), machine_busy_s()
        t0 = time.time()
        run.send(studies, args.senders)
        sent_s = time.time() - t0
        delivered = run.wait_delivered(studies, timeout=120 + 60 * len(studies) / workers)
        t_last = max(t for t, _ in delivered.arrivals)
        cpu1, busy1 = _cpu(run, pg_pid), machine_busy_s()
        wall = t_last - t0
        problems: list[str] = []
        try:  # a job is marked done just after the node answered
            wait_for(lambda: not run.check(studies), 30, interval=0.5, what="jobs to end done")
        except AssertionError:
            problems = run.check(studies)
        rate = len(studies) / wall * 60
        print(
            f"{label}: {len(studies)} studies in {wall:.1f} s (first instance sent -> last "
            f"RTSTRUCT received) = {rate:.1f} studies/min; sending took {sent_s:.1f} s, "
            f"then {wall - sent_s:.1f} s to the last RTSTRUCT"
        )
        spans = [stage_timings(j.stages) for j in run.jobs(studies)]
        med = {
            k: statistics.median(s[k] for s in spans if k in s)
            for k in ("volume", "segment", "rtstruct", "send")
        }
        print(
            f"  per job (median): read {med['volume']:.2f} s, model {med['segment']:.2f} s, "
            f"RTSTRUCT {med['rtstruct']:.2f} s, delivery {med['send']:.2f} s; built per "
            f"worker: {[run.built(w) for w in run.workers]}"
        )
        used = {k: cpu1[k] - cpu0[k] for k in cpu0}
        ours = sum(used.values())
        busy = busy1 - busy0
        print(
            "  CPU s in the window: "
            + ", ".join(f"{k} {v:.1f}" for k, v in used.items())
            + f"; ours {ours:.1f}, machine busy {busy:.1f} of {CORES * wall:.1f} "
            f"({CORES} cores x {wall:.1f} s), other processes {max(busy - ours, 0):.1f}"
        )
        per_study = ours / len(studies)
        print(
            f"  CPU per study {per_study:.2f} s (workers "
            f"{sum(used[w.hostname] for w in run.workers) / len(studies):.2f} s, receiver "
            f"{used['receiver'] / len(studies):.2f} s): {CORES} cores allow at most "
            f"{CORES * 60 / per_study:.1f} studies/min with nothing else running"
        )
        if problems:
            raise RuntimeError(f"{label}: " + "; ".join(problems))
        return rate
    finally:
        run.stop()
        run.remove()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--model", choices=sorted(MODELS), default="nnunet")
    ap.add_argument("--threads", type=int, default=1, help="segmentation.threads per worker")
    ap.add_argument("--senders", type=int, default=3, help="concurrent storescu processes")
    ap.add_argument(
        "--model-seconds", type=float, default=3.0, help="the quick model's sleep per job"
    )
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="aircon-throughput-"))
    load = os.getloadavg()[0]
    print(
        f"{args.studies} phantom studies, model {MODELS[args.model]}, "
        f"segmentation.threads {args.threads}, {args.senders} senders; {CORES} cores, "
        f"load average {load:.2f} at the start (shared machine)",
        flush=True,
    )
    pg = PostgresServer().start()
    try:
        studies = make_studies(root, args.studies)
        rates = {n: _one(root / f"workers{n}", pg, n, studies, args) for n in (1, 2)}
    except (RuntimeError, AssertionError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"ratio two/one workers: {rates[2] / rates[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
