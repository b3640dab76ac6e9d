"""Benchmark: the gateway's C-ECHO round trip and C-STORE rate with the hostile-input corpus
replayed in parallel, against the same measured without it (a ratio).

Starts ``aircon serve`` (a subprocess, loopback, no routing rules: reception only, so model
inference does not compete for the CPU), then measures twice:

  * quiet: C-ECHO round trip (a fresh association each, median of N) and C-STORE rate (a
    24-instance phantom series over one association, repeated, instances/s);
  * under attack: the same while other processes replay the whole corpus (tests/corpus: 55 cases,
    truncated and garbage datasets, bad UIDs, idle and garbage connections, 50 concurrent
    associations ...) in a loop.

Run: ``python bench/hostile.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.config import DestinationConfig  # noqa: E402
from gateway.demo.launcher import Gateway, free_port, write_config  # noqa: E402
from gateway.demo.node import ReceivingNode  # noqa: E402
from gateway.demo.phantom import make_phantom, write_dicom_series  # noqa: E402
from gateway.dicom.scu import echo, store  # noqa: E402
from tests.corpus.generate import generate  # noqa: E402
from tests.corpus.replay import SENDERS, raw_sending  # noqa: E402


def measure(
    gw: DestinationConfig, files: list[Path], rounds: int, echoes: int
) -> tuple[float, float]:
    """(median C-ECHO round trip in ms, C-STORE instances per second)."""
    rtts = []
    for _ in range(echoes):
        t0 = time.perf_counter()
        if not echo(gw, "AIRCON", timeout=30).ok:
            raise SystemExit("C-ECHO failed")
        rtts.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    for _ in range(rounds):
        store(gw, "AIRCON", files, timeout=60)
    rate = rounds * len(files) / (time.perf_counter() - t0)
    return statistics.median(rtts), rate


def attack(port: int, corpus: Path, kinds: set[str], stop: Any, counter: Any) -> None:
    """Replay the corpus's cases of ``kinds`` in a loop until ``stop`` (its own process, so
    that the measuring client does not share an interpreter lock with the attackers)."""
    from tests.corpus.generate import load

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    cases = [c for c in load(corpus) if c.send in kinds]
    with raw_sending():
        while not stop.is_set():
            for case in cases:
                if stop.is_set():
                    return
                try:
                    SENDERS[case.send](port, case, corpus)
                except Exception:  # noqa: BLE001 - hostile input: any client failure is fine
                    pass
                with counter.get_lock():
                    counter.value += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=10, help="series sends per measurement")
    ap.add_argument("--echoes", type=int, default=50)
    ap.add_argument(
        "--attackers", type=int, default=3, help="processes replaying the malformed C-STOREs"
    )
    ap.add_argument(
        "--no-burst", action="store_true", help="leave out the 50-associations-at-once case"
    )
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # pydicom warns about every invalid value it sends
    logging.disable(logging.CRITICAL)  # and pynetdicom logs every refusal the corpus earns
    work = Path(tempfile.mkdtemp(prefix="aircon-hostile-"))
    corpus = work / "corpus"
    generate(corpus)
    series = write_dicom_series(make_phantom(9), work / "series", seed=9)
    node = ReceivingNode(work / "planning", port=free_port())
    node.start()
    port = free_port()
    cfg_path = write_config(
        work,
        port,
        destination_port=node.port,
        destination_ae=node.ae_title,
        overrides={
            "rules": [],
            "limits": {"idle_timeout_s": 5, "max_associations": 128},
            "storage": {"min_free_mb": 100},
        },
    )
    with Gateway(cfg_path, calling_ae="AIRCON") as gateway:
        try:
            gw, db = gateway.dest, gateway.store()

            def stored() -> int:  # C-STOREs answered success, all senders (a resend counts again)
                rows = db.audit_rows()
                return sum(
                    r["instances"]
                    for r in rows
                    if r["event"] == "received" and r["outcome"] == "stored"
                )

            measure(gw, series.files, 1, 3)  # warm-up
            quiet_rtt, quiet_rate = measure(gw, series.files, args.rounds, args.echoes)
            print(f"quiet:        C-ECHO {quiet_rtt:.1f} ms, C-STORE {quiet_rate:.0f} inst/s")
            stop = multiprocessing.Event()
            counter = multiprocessing.Value("i", 0)
            # Malformed C-STOREs from several processes, the 50 concurrent associations, and the
            # idle and garbage connections, all at once.
            groups = [{"c-store"}] * args.attackers + [
                {"tcp-idle", "association-idle", "tcp-bytes"}
            ]
            if not args.no_burst:
                groups.append({"concurrent"})
            attackers = [
                multiprocessing.Process(target=attack, args=(port, corpus, kinds, stop, counter))
                for kinds in groups
            ]
            for a in attackers:
                a.start()
            time.sleep(5)  # let the replay get going
            before, stored_before, t0 = counter.value, stored(), time.monotonic()
            hostile_rtt, hostile_rate = measure(gw, series.files, args.rounds, args.echoes)
            during = counter.value - before
            total_rate = (stored() - stored_before) / (time.monotonic() - t0)
            stop.set()
            for a in attackers:
                a.join(120)
            print(
                f"under attack: C-ECHO {hostile_rtt:.1f} ms, C-STORE {hostile_rate:.0f} inst/s "
                f"({during} corpus cases replayed by {len(attackers)} processes meanwhile; all "
                f"senders together {total_rate:.0f} inst/s accepted)"
            )
            print(
                f"ratio (under attack / quiet): C-ECHO round trip x{hostile_rtt / quiet_rtt:.2f}, "
                f"C-STORE rate x{hostile_rate / quiet_rate:.2f}"
            )
            if not gateway.running:
                raise SystemExit("the gateway died under the corpus")
        finally:
            node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
