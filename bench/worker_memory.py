"""Benchmark: a worker's resident memory over many studies (does ``aircon worker`` leak?).

One ``aircon serve --role receiver`` and one ``aircon worker`` on a fresh PostgreSQL database
and Redis (``tests/services.py``, ``tests/cluster.py``), a receiving node in this process as the
planning system. Once the worker has its model warm, ``--senders`` dcmtk ``storescu`` processes
send ``--studies`` phantom studies (24 MR slices each); each time the worker logs an RTSTRUCT
built (the end of its part of a job) the bench reads the worker's ``VmRSS``
(``/proc/<pid>/status``). It prints the RSS after the model warmed up, after study 1 and study
10, the min/max/last after study 10, and

    rss drift after first 10: +N.N %

the sample furthest from the value at study 10, relative to it; the goal is within +-10 %
(exit status 1 when not, or when a study is not delivered exactly once). The first ten are left
out because allocator pools, torch's and nnU-Net's caches and lazily imported modules grow
there.

The model is the bundled nnU-Net ``pelvis-demo`` by default (the one that holds large arrays
and torch's allocator, so the one that would leak); ``--model quick`` runs the test harness's
python model (a threshold after a sleep) for a fast run of the rest of the worker: reading
the series, the RTSTRUCT, the database and the queue.

Run: ``python bench/worker_memory.py [--studies 100] [--model nnunet|quick]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale_run import MODELS, ScaleRun, make_studies, rss_kib  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.services import PostgresServer  # noqa: E402

GOAL = 10.0  # per cent, either way
BASELINE = 10  # the study whose RSS the later ones are compared with


class RssSampler(threading.Thread):
    """Reads the worker's RSS each time its log shows one more RTSTRUCT built: ``samples[k]``
    is the RSS (KiB) after the k-th study (several studies finished in one poll share it)."""

    def __init__(self, run: ScaleRun, interval: float = 0.05):
        super().__init__(daemon=True, name="rss")
        self.worker = run.workers[0]
        self.run_ = run
        self.interval = interval
        self.samples: dict[int, int] = {}
        self.stop_ = threading.Event()

    def run(self) -> None:
        seen = 0
        while not self.stop_.is_set():
            built = self.run_.built(self.worker)
            if built > seen:
                rss = rss_kib(self.worker.pid)
                for k in range(seen + 1, built + 1):
                    self.samples[k] = rss
                seen = built
            time.sleep(self.interval)


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--model", choices=sorted(MODELS), default="nnunet")
    ap.add_argument("--threads", type=int, default=1, help="segmentation.threads of the worker")
    ap.add_argument("--senders", type=int, default=3, help="concurrent storescu processes")
    ap.add_argument(
        "--model-seconds", type=float, default=0.2, help="the quick model's sleep per job"
    )
    args = ap.parse_args()
    if args.studies <= BASELINE:
        ap.error(f"--studies must be more than {BASELINE}")
    root = Path(tempfile.mkdtemp(prefix="aircon-memory-"))
    print(
        f"{args.studies} phantom studies through one worker, model {MODELS[args.model]}, "
        f"segmentation.threads {args.threads}; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f} at the start (shared machine)",
        flush=True,
    )
    pg = PostgresServer().start()
    run: ScaleRun | None = None
    t0 = time.monotonic()
    try:
        studies = make_studies(root, args.studies)
        run = ScaleRun(
            root / "cluster",
            pg,
            workers=1,
            model=MODELS[args.model],
            threads=args.threads,
            model_seconds=args.model_seconds,
        ).start()
        warm = rss_kib(run.workers[0].pid)
        sampler = RssSampler(run)
        sampler.start()
        run.send(studies, args.senders)
        run.wait_delivered(studies, timeout=120 + 30 * len(studies))
        wait_for(lambda: len(sampler.samples) >= len(studies), 30, what="the last RSS sample")
        sampler.stop_.set()
        sampler.join()
        try:
            wait_for(lambda: not run.check(studies), 30, interval=0.5, what="jobs to end done")
        except AssertionError:
            raise RuntimeError("; ".join(run.check(studies))) from None
    except (RuntimeError, AssertionError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if run is not None:
            run.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    samples = sampler.samples
    base = samples[BASELINE]
    after = [samples[k] for k in range(BASELINE + 1, len(studies) + 1)]
    furthest = max(after, key=lambda v: abs(v - base))
    drift = (furthest - base) / base * 100
    print(f"worker RSS with the model warm: {_mib(warm)}; after study 1: {_mib(samples[1])}")
    print(
        "RSS every 10 studies: "
        + ", ".join(f"{k}: {samples[k] / 1024:.0f}" for k in range(10, len(studies) + 1, 10))
        + " MiB"
    )
    print(
        f"RSS after study {BASELINE}: {_mib(base)}; after it: min {_mib(min(after))}, "
        f"max {_mib(max(after))}, last {_mib(after[-1])} ({time.monotonic() - t0:.0f} s in all)"
    )
    half = len(after) // 2
    first, second = after[:half], after[half:]
    trend = (sum(second) / len(second)) / (sum(first) / len(first)) * 100 - 100
    print(
        f"mean RSS, studies {BASELINE + 1}-{BASELINE + half} vs "
        f"{BASELINE + half + 1}-{len(studies)}: {_mib(sum(first) // len(first))} vs "
        f"{_mib(sum(second) // len(second))} ({trend:+.1f} %: a leak grows here)"
    )
    within = abs(drift) <= GOAL
    print(f"rss drift after first {BASELINE}: {drift:+.1f} %")
    print(f"within +-{GOAL:.0f} %: {'yes' if within else 'NO'}")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
