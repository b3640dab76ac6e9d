"""Ingest benchmark: one MR series over one association, the gateway's SCP vs dcmtk's storescp.

    python bench/ingest.py [--instances 500] [--rounds 3]

Synthesises a series (384 x 384 uint16, ~300 KB per instance, valid UIDs and geometry) once in
a temporary folder, then sends it with dcmtk's ``storescu`` alternately to

* the gateway: :class:`gateway.dicom.scp.StorageSCP` in this process, built from a real config
  (temporary spool, SQLite store, peers allow STORESCU) with a no-op ``on_study``;
* dcmtk's ``storescp +B`` (bit preserving, no fsync) as the reference.

Both dcmtk tools run with ``TCP_NODELAY=1``: without it they stall ~44 ms per instance on
loopback (Nagle + delayed ACK). Loopback only, free ports; everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage

from gateway.config import parse_config
from gateway.db.database import Store
from gateway.demo.launcher import free_port
from gateway.dicom.scp import StorageSCP
from gateway.receive.receiver import Receiver
from gateway.receive.spool import Spool

ROOT = "1.2.826.0.1.3680043.8.498.77."
SEND_TIMEOUT_S = 300


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


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"storescp exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


def storescu(port: int, files: list[Path]) -> float:
    cmd = [
        "storescu",
        "-aec",
        "AIRCON",
        "-aet",
        "STORESCU",
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    t0 = time.perf_counter()
    res = subprocess.run(
        cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=SEND_TIMEOUT_S
    )
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"storescu failed ({res.returncode}): {res.stderr[-2000:]}")
    return seconds


def round_gateway(work: Path, files: list[Path]) -> float:
    port = free_port()
    cfg = parse_config(
        {
            "ae_title": "AIRCON",
            "listen": {"host": "127.0.0.1", "port": port},
            "peers": [{"ae_title": "STORESCU"}],
            "paths": {"spool": "spool", "output": "out", "models": "models"},
            "database": {"url": "sqlite:///aircon.db"},
        },
        work,
    )
    store = Store(cfg.database.url)
    receiver = Receiver(Spool(cfg.paths.spool), store)
    scp = StorageSCP(cfg.ae_title, cfg.listen.host, cfg.listen.port, cfg.peers, receiver)
    scp.start()
    try:
        seconds = storescu(scp.port, files)
    finally:
        scp.stop()
    received = sum(r["instances"] for r in store.list_studies())
    on_disk = len(list(cfg.paths.spool.rglob("*.dcm")))
    store.engine.dispose()
    if received != len(files) or on_disk != len(files):
        raise RuntimeError(f"gateway recorded {received}, spooled {on_disk} of {len(files)}")
    return seconds


def round_storescp(work: Path, files: list[Path]) -> float:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    proc = subprocess.Popen(
        ["storescp", "+B", "-od", str(out), str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(port, proc)
        seconds = storescu(port, files)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    on_disk = sum(1 for p in out.iterdir() if p.is_file())
    if on_disk != len(files):
        raise RuntimeError(f"storescp wrote {on_disk} of {len(files)}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    for tool in ("storescp", "storescu"):
        if shutil.which(tool) is None:
            print(f"bench/ingest.py: dcmtk's {tool} not found on PATH", file=sys.stderr)
            return 2

    with tempfile.TemporaryDirectory(prefix="aircon-bench-") as tmp:
        root = Path(tmp)
        (root / "series").mkdir()
        files = write_series(root / "series", args.instances)
        mb = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"{len(files)} instances, {mb:.0f} MB ({mb * 1e3 / len(files):.0f} KB each), "
            f"one association per send, {args.rounds} round(s)"
        )
        times: dict[str, list[float]] = {"gateway": [], "storescp": []}
        for r in range(1, args.rounds + 1):
            for name, run in (("gateway", round_gateway), ("storescp", round_storescp)):
                work = root / f"{name}-{r}"
                work.mkdir()
                seconds = run(work, files)
                shutil.rmtree(work)
                times[name].append(seconds)
                print(
                    f"round {r}  {name:<8}  {seconds:6.2f} s  {len(files) / seconds:7.1f} inst/s"
                    f"  {mb / seconds:6.1f} MB/s"
                )
        rate = {k: len(files) / statistics.median(v) for k, v in times.items()}
        print(
            f"median    gateway {rate['gateway']:.1f} inst/s, storescp {rate['storescp']:.1f} "
            f"inst/s, ratio gateway/storescp {rate['gateway'] / rate['storescp']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
