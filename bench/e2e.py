"""Benchmark: the gateway's own overhead on the four-series phantom study, end to end.

Starts ``aircon serve`` (a subprocess, embedded config, loopback) with a receiving node as the
planning system, sends a phantom study (T2 + Dixon in/opp/water: rule phantom-demo, two models
merged) over C-STORE, and prints

    overhead = (last instance acknowledged -> RTSTRUCT accepted) - series_quiet_s - model time

where model time is the job's segment stage (both models' predictions); reading the series and
resampling the Dixon water onto the T2 grid (stage ``volume``) and the merge count as overhead.
Then ``bench/send.py``: the send path (``aircon send``) vs dcmtk's storescu on ProstateX. Ends
with the lines ``overhead: N.NN s`` and ``send ratio vs storescu: N.NNx``.
Run: ``python bench/e2e.py [--send-rounds 5]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gateway.demo.launcher import Gateway, free_port, write_config  # noqa: E402
from gateway.demo.node import ReceivingNode  # noqa: E402
from gateway.demo.phantom import make_study, write_study  # noqa: E402
from gateway.dicom.scu import store  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quiet-s", type=float, default=2.0, help="series_quiet_s for the run")
    ap.add_argument("--send-rounds", type=int, default=5, help="bench/send.py rounds (0: none)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aircon-bench-"))
    node = ReceivingNode(work / "planning", port=free_port())
    node.start()
    cfg_path = write_config(
        work,
        free_port(),
        destination_port=node.port,
        destination_ae=node.ae_title,
        overrides={"assembly": {"series_quiet_s": args.quiet_s}},
    )
    with Gateway(cfg_path, calling_ae="AIRCON") as gateway:
        try:
            cfg, gw, db = gateway.cfg, gateway.dest, gateway.store()
            # Warm-up round: the model loads once per process.
            results = []
            for r in range(args.rounds + 1):
                for f in node.files():
                    f.unlink()
                written = write_study(make_study(5000 + r), work / f"study{r}", seed=5000 + r)
                store(gw, "AIRCON", [f for s in written.values() for f in s.files])
                t_ack = time.time()
                while not node.files():
                    time.sleep(0.01)
                t_rt = time.time()
                while True:
                    job = db.list_jobs(limit=1)[0]
                    if job.state in ("done", "failed"):
                        break
                    time.sleep(0.05)
                model_s = job.stages["segment"] - job.stages["volume"]
                volume_s = job.stages["volume"] - job.stages["started"]
                total = t_rt - t_ack
                overhead = total - cfg.assembly.series_quiet_s - model_s
                label = "warm-up" if r == 0 else f"round {r}"
                print(
                    f"{label}: ack->RTSTRUCT {total:.2f} s, "
                    f"quiet {cfg.assembly.series_quiet_s:.1f} s, "
                    f"model {model_s:.2f} s (read+resample {volume_s:.2f} s, merge+RTSTRUCT "
                    f"{job.job_outcome.merge_s:.2f} s), overhead {overhead:.2f} s"
                )
                if r:
                    results.append(overhead)
            overhead = sorted(results)[len(results) // 2]
            print(f"median overhead over {len(results)} warm rounds: {overhead:.2f} s")
        finally:
            node.stop()
    ratio = send_ratio(args.send_rounds)
    print(f"overhead: {overhead:.2f} s (goal <= 0.3 s)")
    print(f"send ratio vs storescu: {ratio} (goal >= 0.5x)")
    return 0


def send_ratio(rounds: int) -> str:
    import send

    if rounds <= 0:
        return "not measured"
    if not (shutil.which("storescu") and shutil.which("storescp") and send.PROSTATEX.is_dir()):
        return "not measured (dcmtk or the ProstateX study missing)"
    return f"{send.compare(send.PROSTATEX, rounds):.2f}x"


if __name__ == "__main__":
    sys.exit(main())
