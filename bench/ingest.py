"""Ingest benchmark: one MR series into several Storage SCPs, side by side in one run.

    python bench/ingest.py [--instances 500] [--rounds 3] [--baseline f9bbf75]

Synthesises a series (384 x 384 uint16, ~296 KB per instance, valid UIDs and geometry) once in
a temporary folder, then sends it with dcmtk's ``storescu`` (``TCP_NODELAY=1``: without it
dcmtk stalls ~44 ms per instance on loopback), over one association and over 4 concurrent
associations (4 ``storescu`` processes, a quarter each), in turn to

* ``storescp``: dcmtk's ``storescp +B`` (bit preserving, no fsync), the reference;
* ``orthanc``: Debian's ``Orthanc`` with a temporary config (its storage synced by default);
* ``baseline``: the gateway's Storage SCP at ``--baseline`` (default f9bbf75, "today's
  gateway"), from a temporary ``git worktree`` of that revision, removed afterwards;
* ``gateway``: the gateway's Storage SCP of this tree.

Every receiver runs in its own process with a fresh spool / database; the gateway ones are
built from a real config (SQLite store, peers allow STORESCU) and log at INFO to a file, as
``aircon serve`` does. A round starts each receiver afresh and checks that it holds every
instance (the gateways: rows and spool files, after their stop has written every row).
Reported: instances per second (wall time of the send, median over rounds) and the receiver's
CPU time per instance (user + system of its process, all threads, until everything is
recorded). Orthanc listens on all interfaces, so the bench runs itself inside a private
network namespace (``unshare -rn``, loopback only), as ``scripts/run-tests.sh`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage

REPO = Path(__file__).resolve().parents[1]
ROOT = "1.2.826.0.1.3680043.8.498.77."
SEND_TIMEOUT_S = 300
RECEIVERS = ("storescp", "orthanc", "baseline", "gateway")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The gateway's Storage SCP in a process of its own; the same code drives both revisions.
GATEWAY_RUNNER = """
import logging, sys
from pathlib import Path
from gateway.config import parse_config
from gateway.db.database import Store
from gateway.dicom.scp import StorageSCP
from gateway.receive.receiver import Receiver
from gateway.receive.spool import Spool
work = Path(sys.argv[1])
logging.basicConfig(filename=work / "gateway.log", level=logging.INFO)
logging.getLogger("pynetdicom").setLevel(logging.WARNING)
cfg = parse_config(
    {
        "ae_title": "AIRCON",
        "listen": {"host": "127.0.0.1", "port": 11112},  # the SCP takes a free one
        "peers": [{"ae_title": "STORESCU"}],
        "paths": {"spool": "spool", "output": "out", "models": "models"},
        "database": {"url": "sqlite:///aircon.db"},
        "storage": {"min_free_mb": 0},
    },
    work,
)
store = Store(cfg.database.url)
receiver = Receiver(Spool(cfg.paths.spool), store, limits=cfg.limits, storage=cfg.storage)
scp = StorageSCP(cfg.ae_title, "127.0.0.1", 0, cfg.peers, receiver, limits=cfg.limits)
scp.start()
print(scp.port, flush=True)
sys.stdin.readline()
scp.stop()
recorded = sum(r["instances"] for r in store.list_studies())
print(recorded, len(list(cfg.paths.spool.rglob("*.dcm"))), flush=True)
sys.stdin.readline()
"""


def write_series(folder: Path, n: int, size: int = 384) -> list[Path]:
    """``n`` axial MR slices, 3 mm apart, one frame of reference; returns the file paths."""
    rng = np.random.default_rng(0)
    study, series, frame = ROOT + "1", ROOT + "1.2", ROOT + "1.3"
    files = []
    for k in range(n):
        sop = f"{ROOT}1.2.{k + 1}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.PatientName = "Bench^Ingest"
        ds.PatientID = "BENCH"
        ds.Modality = "MR"
        ds.SeriesDescription = "bench t2"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-96.0, -96.0, round(3.0 * k, 2)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 3.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
        path = folder / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after 30 s")


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True


def send(port: int, files: list[Path], associations: int) -> float:
    """Send ``files`` split over ``associations`` concurrent storescu processes; seconds."""
    parts = [files[k::associations] for k in range(associations)]
    cmd = ["storescu", "-aec", "AIRCON", "-aet", "STORESCU", "127.0.0.1", str(port)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*cmd, *map(str, part)],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for part in parts
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=SEND_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed ({proc.returncode}): {err[-2000:]!r}")
    return time.perf_counter() - t0


@dataclass
class Receiver:
    """A started receiver: its port and process, and how to count what it holds."""

    port: int
    proc: subprocess.Popen[bytes]
    held: Callable[[], int]


@contextlib.contextmanager
def storescp(work: Path, n: int) -> Iterator[Receiver]:
    (port,) = free_ports(1)
    out = work / "out"
    out.mkdir()
    proc = subprocess.Popen(
        ["storescp", "+B", "-od", str(out), str(port)], env=dcmtk_env(), stderr=subprocess.PIPE
    )
    try:
        wait_until(lambda: listening(port), proc, "storescp")
        yield Receiver(port, proc, lambda: sum(1 for p in out.iterdir() if p.is_file()))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def orthanc(work: Path, n: int) -> Iterator[Receiver]:
    dicom_port, http_port = free_ports(2)
    db = work / "orthanc-db"
    conf = work / "orthanc.json"
    conf.write_text(
        json.dumps(
            {
                "Name": "AIRCON-BENCH",
                "StorageDirectory": str(db),
                "IndexDirectory": str(db),
                "HttpPort": http_port,
                "DicomPort": dicom_port,
                "DicomAet": "AIRCON",
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "DicomCheckCalledAet": False,
                "DicomAlwaysAllowStore": True,
                "Plugins": [],
            }
        )
    )

    def get(path: str) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=10) as r:
            return dict(json.loads(r.read()))

    with (work / "orthanc.log").open("wb") as log:
        # TCP_NODELAY=1 as for the dcmtk tools: Orthanc reads it through DCMTK.
        proc = subprocess.Popen(
            [orthanc_exe(), str(conf)], stdout=log, stderr=log, cwd=work, env=dcmtk_env()
        )
        try:
            wait_until(lambda: bool(get("/system")) and listening(dicom_port), proc, "Orthanc")
            yield Receiver(dicom_port, proc, lambda: get("/statistics")["CountInstances"])
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def gateway_at(pythonpath: Path) -> Callable[[Path, int], contextlib.AbstractContextManager]:
    @contextlib.contextmanager
    def start(work: Path, n: int) -> Iterator[Receiver]:
        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
        proc = subprocess.Popen(
            [sys.executable, "-c", GATEWAY_RUNNER, str(work)],
            env=env,
            cwd=work,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            port = int(proc.stdout.readline())

            def held() -> int:  # stop (every row written), then count rows and files
                proc.stdin.write("stop\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
                recorded, spooled = map(int, proc.stdout.readline().split())  # type: ignore[union-attr]
                return min(recorded, spooled)

            yield Receiver(port, proc, held)  # type: ignore[arg-type]
        finally:
            proc.kill()
            proc.wait(timeout=10)

    return start


def orthanc_exe() -> str:
    return shutil.which("Orthanc") or "/usr/sbin/Orthanc"


@contextlib.contextmanager
def baseline_tree(rev: str, root: Path) -> Iterator[Path]:
    """A temporary detached worktree of ``rev``; removed afterwards."""
    tree = root / f"baseline-{rev}"
    git = ["git", "-C", str(REPO)]
    subprocess.run(
        [*git, "worktree", "add", "--detach", str(tree), rev], check=True, capture_output=True
    )
    try:
        yield tree
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(tree)], capture_output=True)


def measure(start, work: Path, files: list[Path], associations: int) -> tuple[float, float]:
    """(seconds of the send, receiver CPU seconds until everything is held)."""
    with start(work, len(files)) as rx:
        cpu0 = cpu_s(rx.proc.pid)
        seconds = send(rx.port, files, associations)
        held = rx.held()
        cpu = cpu_s(rx.proc.pid) - cpu0
    if held != len(files):
        raise RuntimeError(f"{work.name}: holds {held} of {len(files)} instances")
    return seconds, cpu


def in_private_netns(argv: list[str]) -> int | None:
    """Run this bench again inside a private network namespace; None when already in one."""
    if os.environ.get("AIRCON_BENCH_NETNS") == "1":
        return None
    inner = 'ip link set lo up && AIRCON_BENCH_NETNS=1 exec "$0" "$@"'
    unshare = ["unshare", "-n"] if os.getuid() == 0 else ["unshare", "-rn"]
    cmd = [*unshare, "sh", "-c", inner, sys.executable, str(Path(__file__).resolve()), *argv]
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", default="f9bbf75", help="the gateway revision to compare with")
    p.add_argument("--associations", type=int, default=4, help="for the concurrent sends")
    args = p.parse_args(argv)
    for tool in ("storescp", "storescu", "git"):
        if shutil.which(tool) is None:
            print(f"bench/ingest.py: {tool} not found on PATH", file=sys.stderr)
            return 2
    has_orthanc = Path(orthanc_exe()).exists()
    if has_orthanc and (rc := in_private_netns(argv)) is not None:
        return rc

    with tempfile.TemporaryDirectory(prefix="aircon-bench-") as tmp:
        root = Path(tmp)
        (root / "series").mkdir()
        files = write_series(root / "series", args.instances)
        mb = sum(f.stat().st_size for f in files) / 1e6
        with baseline_tree(args.baseline, root) as tree:
            starts = {
                "storescp": storescp,
                "orthanc": orthanc,
                "baseline": gateway_at(tree),
                "gateway": gateway_at(REPO),
            }
            if not has_orthanc:
                del starts["orthanc"]
                print("Debian's Orthanc not found: left out")
            print(
                f"{len(files)} instances, {mb:.0f} MB ({mb * 1e3 / len(files):.0f} KB each), "
                f"{args.rounds} round(s); baseline = {args.baseline}"
            )
            runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
            for r in range(1, args.rounds + 1):
                for assocs in (1, args.associations):
                    for name, start in starts.items():
                        work = root / f"{name}-{r}-{assocs}"
                        work.mkdir()
                        seconds, cpu = measure(start, work, files, assocs)
                        shutil.rmtree(work)
                        runs.setdefault((name, assocs), []).append((seconds, cpu))
                        print(
                            f"round {r}  {assocs} assoc  {name:<9} {len(files) / seconds:7.1f} "
                            f"inst/s  {cpu * 1e3 / len(files):5.2f} ms CPU/inst",
                            flush=True,
                        )
    report(runs, len(files), args.associations, args.baseline)
    return 0


def report(
    runs: dict[tuple[str, int], list[tuple[float, float]]], n: int, assocs: int, baseline: str
) -> None:
    rate = {k: n / statistics.median(s for s, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) * 1e3 / n for k, v in runs.items()}
    print("\nmedians                  inst/s   ms CPU/inst")
    for (name, a), r in sorted(rate.items(), key=lambda kv: (kv[0][1], RECEIVERS.index(kv[0][0]))):
        print(f"{a} assoc  {name:<12} {r:9.1f} {cpu[name, a]:12.2f}")
    for a in (assocs, 1):  # the one-association ratios last: they are the goal
        print(f"\nratios of the gateway, {a} association(s):")
        for other in ("baseline", "storescp", "orthanc"):  # the goal's two lines end it
            if (other, a) in rate:
                label = f"baseline {baseline}" if other == "baseline" else other
                line = f"ratio vs {label}: {rate['gateway', a] / rate[other, a]:.2f}x"
                print(line if a == 1 else "  " + line)


if __name__ == "__main__":
    sys.exit(main())
