"""Large objects in: the gateway's peak resident memory while associations send big instances.

    python bench/large_receive.py [--megabytes 100] [--associations 8] [--baseline d5b9e73]

Makes an Enhanced MR Image of ``--megabytes`` MB of random 16-bit frames
(``tests/large_objects.py``) in ``--associations`` copies, each its own study. For this tree and
for ``--baseline`` (a temporary ``git worktree``, as ``bench/ingest.py`` does) it starts the
gateway's Storage SCP in a process of its own (``bench/ingest.py``'s runner: SQLite, INFO log
to a file), afresh for each case: one association (dcmtk ``storescu``) sending one copy, then
``--associations`` associations sending one copy each, all at once. Reported per case: the
process's resident memory once listening (idle, ``VmRSS``), its peak until every instance is
recorded (``VmHWM`` of ``/proc/<pid>/status``), the data in flight and

    growth / in flight = (peak - idle) / (instances sent at once x instance size)

The goal: under 2 for the concurrent case. Also printed: the concurrent peak against the
one-association peak, over the extra data in flight.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ingest import baseline_tree, gateway_at, send  # noqa: E402
from tests.large_objects import enhanced_mr, save_copies  # noqa: E402

MB = 1e6


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@dataclass(frozen=True)
class Case:
    receiver: str
    associations: int
    idle_mb: float
    peak_mb: float
    in_flight_mb: float
    seconds: float

    @property
    def ratio(self) -> float:
        return (self.peak_mb - self.idle_mb) / self.in_flight_mb


def measure(start, work: Path, files: list[Path], name: str) -> Case:  # noqa: ANN001
    work.mkdir()
    with start(work, len(files)) as rx:
        time.sleep(1.0)  # imports and threads settled
        idle = status_kib(rx.proc.pid, "VmRSS") / 1024
        seconds = send(rx.port, files, len(files))
        held = rx.held()  # stopped: every row written
        peak = status_kib(rx.proc.pid, "VmHWM") / 1024
    shutil.rmtree(work)
    if held != len(files):
        raise RuntimeError(f"{name}: holds {held} of {len(files)} instances")
    in_flight = sum(f.stat().st_size for f in files) / 1024**2
    return Case(name, len(files), idle, peak, in_flight, seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--megabytes", type=float, default=100.0, help="size of one instance")
    p.add_argument("--associations", type=int, default=8, help="for the concurrent case")
    p.add_argument("--baseline", default="d5b9e73", help="the gateway revision to compare with")
    p.add_argument("--no-baseline", action="store_true", help="measure this tree only")
    args = p.parse_args(argv)
    for tool in ("storescu", "git"):
        if shutil.which(tool) is None:
            print(f"bench/large_receive.py: {tool} not found on PATH", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="aircon-large-") as tmp:
        root = Path(tmp)
        ds = enhanced_mr(args.megabytes)
        files = save_copies(ds, root / "instances", args.associations)
        size = files[0].stat().st_size
        print(
            f"Enhanced MR, {ds.NumberOfFrames} frames of {ds.Rows} x {ds.Columns} uint16: "
            f"{size / MB:.1f} MB per instance ({size / 1024**2:.1f} MiB); "
            f"1 and {args.associations} association(s) at once"
        )
        del ds
        cases: list[Case] = []
        with baseline_tree(args.baseline, root) as tree:
            starts = {"gateway": gateway_at(REPO)}
            if not args.no_baseline:
                starts = {"baseline": gateway_at(tree), **starts}
            for name, start in starts.items():
                for n in (1, args.associations):
                    case = measure(start, root / f"{name}-{n}", files[:n], name)
                    cases.append(case)
                    print(
                        f"  {name:<9} {n} assoc: idle {case.idle_mb:.0f} MiB, peak "
                        f"{case.peak_mb:.0f} MiB, sent in {case.seconds:.1f} s",
                        flush=True,
                    )
    report(cases, args.baseline)
    return 0


def report(cases: list[Case], baseline: str) -> None:
    print(
        f"\n{'receiver':<22} assocs  idle MiB  peak MiB  growth MiB  in flight MiB  "
        "growth/in flight"
    )
    for c in cases:
        label = f"baseline {baseline}" if c.receiver == "baseline" else "gateway (this tree)"
        print(
            f"{label:<22} {c.associations:6d} {c.idle_mb:9.0f} {c.peak_mb:9.0f} "
            f"{c.peak_mb - c.idle_mb:11.0f} {c.in_flight_mb:14.0f} {c.ratio:17.2f}"
        )
    print()
    for name in dict.fromkeys(c.receiver for c in cases):
        one, many = [c for c in cases if c.receiver == name]
        extra = many.in_flight_mb - one.in_flight_mb
        print(
            f"{name}: {many.associations} assoc peak - 1 assoc peak = "
            f"{many.peak_mb - one.peak_mb:.0f} MiB for {extra:.0f} MiB more in flight "
            f"({(many.peak_mb - one.peak_mb) / extra:.2f}x)"
        )


if __name__ == "__main__":
    sys.exit(main())
