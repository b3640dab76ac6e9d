"""Benchmark: random crash trials of the gateway; nothing acknowledged lost, nothing duplicated.

Each trial (``tests/faults/harness.py``) starts ``aircon serve`` (a subprocess, fresh work
folder, a receiving node as the planning system), sends one or two phantom studies with dcmtk
``storescu``, and kills the gateway with SIGKILL at a random point: one of the product's crash
points (``faults.crash_at``, the n-th time it is reached) or from outside (after the n-th
acknowledged instance, during inference, after a random delay, or from the destination while it
holds the RTSTRUCT). A quarter of the trials kill it a second time during the recovery, a quarter
of the senders retry only seconds later. It restarts the gateway without faults, re-sends the
studies whose send broke, waits until everything has settled and counts

    lost         instances storescu saw acknowledged that are not in the spool and database
    duplicated   studies with more than one RTSTRUCT SOP Instance UID at the destination
    undelivered  studies whose latest job did not end done and delivered

The last line is ``trials=N lost=L duplicated=D undelivered=U`` (instances and studies summed
over the trials). A trial whose first fault never happened, or whose receive crash point fired
at another instance than it names, also fails: listed, not tallied. Failed trials keep their
work folder (gateway.log, aircon.db, spool); the exit status is 1 when any trial failed.
A fifth of the trials run the real nnU-Net model (``--nnunet``), the others a quick python model.
Run: ``python bench/faults.py [--trials 50] [--seed S] [--nnunet 0.2]`` (~15 min on 2 cores).

``--distributed``: the same counts for the scaled-out gateway (``tests/faults/distributed.py``):
each trial starts ``aircon serve --role receiver`` and two ``aircon worker`` processes on a
private PostgreSQL and Redis, sends one to three studies and kills a worker mid-inference or at
a random time, the receiver (after the n-th acknowledged instance, at one of its crash points,
or at a random time), a worker at its crash point, or restarts Redis. Run:
``python bench/faults.py --distributed --trials 20`` (~20 min on 2 cores).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.faults.harness import (  # noqa: E402
    NNUNET_MODEL,
    QUICK_MODEL,
    CrashHarness,
    TrialResult,
    random_fault,
    write_template,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from time)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the trials (kept)")
    ap.add_argument(
        "--nnunet",
        type=float,
        default=0.2,
        help="share of trials that run the real nnU-Net model pelvis-demo (its load takes ~20 s"
        " per start on 2 cores); the others run the harness's quick python model",
    )
    ap.add_argument(
        "--distributed",
        action="store_true",
        help="receiver + two workers on PostgreSQL and Redis (tests/faults/distributed.py)",
    )
    args = ap.parse_args()
    if args.distributed:
        return distributed(args)
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    root = args.work or Path(tempfile.mkdtemp(prefix="aircon-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"seed {seed}; work {root}", flush=True)
    harness = CrashHarness(root, write_template(root / "template"))
    results = []
    t0 = time.monotonic()
    for i in range(1, args.trials + 1):
        studies = 2 if rng.random() < 0.3 else 1
        fault = random_fault(rng, studies)
        second = random_fault(rng, studies) if rng.random() < 0.25 else None
        resend_delay_s = rng.uniform(3.0, 10.0) if rng.random() < 0.25 else 0.0
        model = NNUNET_MODEL if rng.random() < args.nnunet else QUICK_MODEL
        result = harness.run(
            f"trial{i:03d}",
            fault,
            studies,
            second=second,
            resend_delay_s=resend_delay_s,
            model=model,
            keep=False,
        )
        late = result.resent and resend_delay_s
        extra = f", sender retries after {resend_delay_s:.1f} s" if late else ""
        print(f"[{i}/{args.trials}] ({model}{extra}) {result.report()}", flush=True)
        results.append(result)
    return summarise(args, results, seed, root, t0)


def summarise(
    args: argparse.Namespace, results: list[TrialResult], seed: int, root: Path, t0: float
) -> int:
    """The closing lines (the last one is what the issue asks for); 1 when a trial failed."""
    failed = [r for r in results if not r.ok]
    lost = sum(len(r.lost) for r in results)
    duplicated = sum(len(r.duplicated) for r in results)
    undelivered = sum(len(r.undelivered) for r in results)
    print(f"{args.trials} trials in {time.monotonic() - t0:.0f} s; seed {seed}")
    for result in failed:
        print(f"failed: {result.line()}  ({result.work})")
    if not failed and args.work is None:
        shutil.rmtree(root, ignore_errors=True)
    print(f"trials={args.trials} lost={lost} duplicated={duplicated} undelivered={undelivered}")
    return 1 if failed else 0


def distributed(args: argparse.Namespace) -> int:
    from tests.faults.distributed import DistributedHarness, random_cluster_fault
    from tests.services import PostgresServer, RedisServer

    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    root = args.work or Path(tempfile.mkdtemp(prefix="aircon-faults-dist-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"seed {seed}; work {root}; receiver + 2 workers on PostgreSQL and Redis", flush=True)
    postgres, redis = PostgresServer().start(), RedisServer().start()
    results = []
    t0 = time.monotonic()
    try:
        harness = DistributedHarness(root, write_template(root / "template"), postgres, redis)
        for i in range(1, args.trials + 1):
            studies = rng.choice((1, 2, 3))
            fault = random_cluster_fault(rng, studies)
            result = harness.run_cluster(f"trial{i:03d}", fault, studies, keep=False)
            print(f"[{i}/{args.trials}] {result.report()}", flush=True)
            results.append(result)
    finally:
        postgres.stop()
        redis.stop()
    return summarise(args, results, seed, root, t0)


if __name__ == "__main__":
    sys.exit(main())
