"""Shared fixtures: real peers (Orthanc, dcmtk) and the gateway as a real subprocess.

Servers bind to loopback on free ports. Orthanc 1.10 listens on all interfaces, so tests that
start it run only inside a private network namespace (``scripts/run-tests.sh`` provides one and
sets AIRCON_TEST_NETNS=1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from gateway.db.database import Store
from gateway.demo.launcher import Gateway, free_port, free_ports, write_config
from tests.datasets import new_instance
from tests.services import PostgresServer, RedisServer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PROSTATEX = SHARED_DATA / "prostatex" / "ProstateX-0000"
PROSTATEX_T2 = PROSTATEX / "07-07-2011" / "4.000000-t2tsetra-00702"


def dcmtk_env() -> dict[str, str]:
    # Without TCP_NODELAY dcmtk stalls ~44 ms per message on loopback.
    return {**os.environ, "TCP_NODELAY": "1"}


def wait_for(
    predicate: Any, timeout: float, interval: float = 0.25, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def mr_slice(**attributes: Any) -> Dataset:
    """One axial MR slice (8 x 8, 16-bit, zero pixels) with fresh valid UIDs, geometry and file
    meta, no patient data; ``attributes`` (DICOM keywords) override or add."""
    ds = new_instance(MRImageStorage)
    ds.ImagePositionPatient = [-2.0, -2.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 3.0
    ds.Rows, ds.Columns = 8, 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = bytes(8 * 8 * 2)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.fixture
def make_mr_slice() -> Any:
    """:func:`mr_slice` as a fixture: ``make_mr_slice(**attributes)``."""
    return mr_slice


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the session (``new_database()`` for each test)."""
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private Redis server for one test (it may restart it)."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database's URL, once on SQLite (embedded) and once on PostgreSQL (scale-out):
    the claims must hold on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'aircon.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def db(database_url: str) -> Store:
    """An empty database, on SQLite and on PostgreSQL."""
    return Store(database_url)


@pytest.fixture(scope="session")
def prostatex() -> Path:
    if not PROSTATEX.is_dir():
        pytest.skip(f"real test data not found at {PROSTATEX}")
    return PROSTATEX


# ---------------------------------------------------------------------------------------------
# Orthanc: the stand-in planning system


@dataclass
class Orthanc:
    dicom_port: int
    http_port: int
    proc: subprocess.Popen[bytes]
    ae_title: str = "ORTHANC"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            data = r.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def instances_of_modality(self, modality: str) -> list[str]:
        series = self.post(
            "/tools/find", {"Level": "Series", "Query": {"Modality": modality}, "Expand": True}
        )
        return [i for s in series for i in s["Instances"]]

    def download(self, instance_id: str, dest: Path) -> Path:
        dest.write_bytes(self.get(f"/instances/{instance_id}/file"))
        return dest


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    if os.environ.get("AIRCON_TEST_NETNS") != "1":
        pytest.skip("Orthanc listens on all interfaces: run via scripts/run-tests.sh")
    exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(exe).exists():
        pytest.skip("Debian's orthanc is not installed")
    dicom_port, http_port = free_ports(2)
    db = tmp_path / "orthanc-db"
    conf = tmp_path / "orthanc.json"
    conf.write_text(
        json.dumps(
            {
                "Name": "AIRCON-TEST",
                "StorageDirectory": str(db),
                "IndexDirectory": str(db),
                "HttpPort": http_port,
                "DicomPort": dicom_port,
                "DicomAet": "ORTHANC",
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "DicomCheckCalledAet": False,
                "DicomAlwaysAllowStore": True,
                "Plugins": [],
                "DicomModalities": {},
                "StableAge": 1,
            }
        )
    )
    log = (tmp_path / "orthanc.log").open("wb")
    proc = subprocess.Popen([exe, str(conf)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    node = Orthanc(dicom_port, http_port, proc)

    def up() -> bool:
        try:
            return bool(node.get("/system"))
        except OSError:
            return False

    wait_for(up, 30, what="Orthanc to start")
    yield node
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


# ---------------------------------------------------------------------------------------------
# The gateway as a subprocess (gateway.demo.launcher), with what the tests ask of it


class GatewayProcess(Gateway):
    """:class:`Gateway` plus dcmtk ``storescu`` towards it and its jobs as ``aircon jobs``
    describes them."""

    def storescu(
        self, path: Path, calling_ae: str = "STORESCU", *, required: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Send with dcmtk storescu; ``required``: propose the files' own SOP classes (``-R``;
        storescu's default list lacks e.g. Legacy Converted Enhanced MR)."""
        args = ["storescu", "-aet", calling_ae, "-aec", "AIRCON", *(["-R"] if required else [])]
        if path.is_dir():
            args += ["+sd", "+r"]
        return subprocess.run(
            args + ["127.0.0.1", str(self.port), str(path)],
            capture_output=True,
            text=True,
            env=dcmtk_env(),
            timeout=300,
        )

    def jobs(self) -> list[dict[str, Any]]:
        from gateway.monitor.jobs import describe

        st = self.store()
        return describe(st, st.list_jobs())

    def wait_jobs(self, n: int, timeout: float = 240) -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited: {self.log()[-3000:]}")
            jobs = self.jobs()
            finished = [j for j in jobs if j["state"] in ("done", "failed")]
            return jobs if len(finished) >= n else None

        return wait_for(done, timeout, interval=0.5, what=f"{n} finished job(s)")


def rule(name: str, models: list[str], **extra: Any) -> dict[str, Any]:
    """A routing rule for test configs: any MR study to ``models``, delivered to 'planning'."""
    return {
        "name": name,
        "match": {"series": {"Modality": "^MR$"}},
        "models": models,
        "destinations": ["planning"],
        **extra,
    }


# The tests' defaults on top of the embedded config: a quiet time short enough for tests, the
# pelvis-demo model for any MR study, and a disk guard small enough for a CI machine.
TEST_OVERRIDES: dict[str, Any] = {
    "assembly": {"series_quiet_s": 2, "study_timeout_s": 300},
    "rules": [rule("pelvis-mr", ["pelvis-demo"])],
    "storage": {"min_free_mb": 100},
}


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Any]:
    """``factory(destination_port, **sections)``: a gateway (not started) on the embedded config
    with :data:`TEST_OVERRIDES`, then ``sections``, its destinations at ``destination_port``."""
    started: list[GatewayProcess] = []

    def factory(destination_port: int, **overrides: Any) -> GatewayProcess:
        work = tmp_path / f"gw{len(started)}"
        cfg = write_config(
            work,
            free_port(),
            destination_port=destination_port,
            overrides={**TEST_OVERRIDES, **overrides},
        )
        gw = GatewayProcess(cfg)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.stop()
