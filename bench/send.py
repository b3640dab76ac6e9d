"""Send benchmark: ``aircon send``'s C-STORE path vs dcmtk's ``storescu``, one study.

    python bench/send.py [--rounds 5] [--study /work/shared/data/prostatex/ProstateX-0000]

Sends the study (default: ProstateX-0000, 164 MR instances, 16 MB) over one association,
alternately with :func:`gateway.dicom.scu.store` in this process (what ``aircon send`` runs,
without its progress bar and process start) and with ``storescu`` (a process of its own,
TCP_NODELAY=1), each to a fresh dcmtk ``storescp +B`` on loopback that must have written every
instance. Prints each round, then ``send ratio vs storescu: N.NNx`` (storescu's median time /
ours: 1.00x is as fast as storescu, 0.50x twice its time).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest import dcmtk_env, listening, wait_until  # noqa: E402

from gateway.config import DestinationConfig  # noqa: E402
from gateway.demo.launcher import free_port  # noqa: E402
from gateway.dicom.scu import store  # noqa: E402

PROSTATEX = Path("/work/shared/data/prostatex/ProstateX-0000")


def _with_storescp(work: Path, n: int, send: Callable[[int], None]) -> float:
    port = free_port()
    out = work / "received"
    out.mkdir()
    proc = subprocess.Popen(
        ["storescp", "+B", "-od", str(out), str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: listening(port), proc, "storescp")
        t0 = time.perf_counter()
        send(port)
        seconds = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    got = sum(1 for p in out.iterdir() if p.is_file())
    shutil.rmtree(out)
    if got != n:
        raise RuntimeError(f"storescp wrote {got} of {n}")
    return seconds


def _aircon(files: list[Path]) -> Callable[[int], None]:
    def send(port: int) -> None:
        dest = DestinationConfig(ae_title="STORESCP", host="127.0.0.1", port=port)
        store(dest, "AIRCON", files, timeout=60, lost_retries=2)

    return send


def _storescu(files: list[Path]) -> Callable[[int], None]:
    def send(port: int) -> None:
        cmd = ["storescu", "-aet", "AIRCON", "-aec", "STORESCP", "127.0.0.1", str(port)]
        res = subprocess.run(
            [*cmd, *map(str, files)], env=dcmtk_env(), capture_output=True, text=True
        )
        if res.returncode != 0:
            raise RuntimeError(f"storescu failed ({res.returncode}): {res.stderr[-2000:]}")

    return send


def compare(study: Path = PROSTATEX, rounds: int = 5, verbose: bool = True) -> float:
    """Median storescu time / median ``store`` time over ``rounds`` alternating rounds."""
    files = sorted(p for p in study.rglob("*") if p.is_file())
    times: dict[str, list[float]] = {"aircon": [], "storescu": []}
    with tempfile.TemporaryDirectory(prefix="aircon-send-") as tmp:
        for r in range(1, rounds + 1):
            for name, send in (("aircon", _aircon(files)), ("storescu", _storescu(files))):
                seconds = _with_storescp(Path(tmp), len(files), send)
                times[name].append(seconds)
                if verbose:
                    print(f"send round {r}  {name:<8}  {seconds:6.3f} s  {len(files)} instances")
    ours, theirs = statistics.median(times["aircon"]), statistics.median(times["storescu"])
    if verbose:
        print(f"send median  aircon {ours:.3f} s, storescu {theirs:.3f} s")
    return theirs / ours


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--study", type=Path, default=PROSTATEX)
    args = ap.parse_args()
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        print("bench/send.py: dcmtk's storescu/storescp not found on PATH", file=sys.stderr)
        return 2
    if not args.study.is_dir():
        print(f"bench/send.py: no study at {args.study}", file=sys.stderr)
        return 2
    print(f"send ratio vs storescu: {compare(args.study, args.rounds):.2f}x (goal >= 0.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
