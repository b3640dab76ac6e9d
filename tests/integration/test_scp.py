"""The Storage SCP in-process with a real SCU: statuses a sending node sees."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from gateway.config import DestinationConfig, LimitsConfig, PeerConfig, StorageConfig
from gateway.db.database import Store
from gateway.dicom.scp import StorageSCP
from gateway.dicom.scu import store
from gateway.errors import DeliveryRejected, PeerBusy, PeerUnavailable
from gateway.receive.receiver import Receiver
from gateway.receive.spool import Spool
from tests.conftest import mr_slice, wait_for


@pytest.fixture
def scp_factory(db: Store) -> Iterator:
    servers: list[StorageSCP] = []

    def make(
        spool_root: Path,
        peers: tuple[PeerConfig, ...] = (PeerConfig(ae_title="SENDER"),),
        limits: LimitsConfig | None = None,
        storage: StorageConfig | None = None,
    ) -> tuple[StorageSCP, Callable[[], list[str]]]:
        storage = storage or StorageConfig(min_free_mb=10)
        rx = Receiver(Spool(spool_root), db, limits=limits, storage=storage)

        def touched(wait_s: float = 3.0) -> list[str]:
            """Studies whose readiness check the association's end asked for."""
            deadline = time.monotonic() + wait_s
            while True:
                due = [uid for uid, _ in db.due_checks(now=time.time() + 1)]
                if due or time.monotonic() > deadline:
                    return due
                time.sleep(0.05)

        scp = StorageSCP("AIRCON", "127.0.0.1", 0, peers, rx, limits=limits)
        scp.start()
        servers.append(scp)
        return scp, touched

    yield make
    for s in servers:
        s.stop()


def _dest(scp: StorageSCP) -> DestinationConfig:
    return DestinationConfig(ae_title="AIRCON", host="127.0.0.1", port=scp.port)


def test_store_success_is_durable_before_the_response(scp_factory, tmp_path: Path) -> None:
    scp, touched = scp_factory(tmp_path / "spool")
    ds = mr_slice()
    assert store(_dest(scp), "SENDER", [ds]) == [0x0000]
    files = list((tmp_path / "spool").rglob("*.dcm"))
    assert [f.name for f in files] == [f"{ds.SOPInstanceUID}.dcm"]
    assert touched() == [ds.StudyInstanceUID]  # a readiness check was scheduled


def test_failed_spool_write_answers_out_of_resources(scp_factory, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # the spool root is a file: every write fails with OSError
    scp, touched = scp_factory(blocker)
    with pytest.raises(PeerBusy, match="0xA700"):
        store(_dest(scp), "SENDER", [mr_slice()])
    assert touched(wait_s=0.5) == []


def test_uid_with_path_separator_is_refused(scp_factory, tmp_path: Path) -> None:
    scp, _ = scp_factory(tmp_path / "spool")
    ds = mr_slice()
    ds.StudyInstanceUID = "1.2.3/../../etc"
    with pytest.raises(DeliveryRejected, match="0xC210"):
        store(_dest(scp), "SENDER", [ds])
    assert not list(tmp_path.rglob("etc*"))


def test_unknown_calling_ae_is_rejected_at_association(scp_factory, tmp_path: Path) -> None:
    scp, _ = scp_factory(tmp_path / "spool")
    with pytest.raises(PeerUnavailable, match="rejected"):
        store(_dest(scp), "STRANGER", [mr_slice()])
    assert not (tmp_path / "spool").exists() or not list((tmp_path / "spool").rglob("*.dcm"))


def test_peer_pinned_to_another_address_is_rejected(scp_factory, tmp_path: Path) -> None:
    peers = (
        PeerConfig(ae_title="SENDER", host="127.0.0.1"),
        PeerConfig(ae_title="FAR", host="10.9.8.7"),
    )
    scp, _ = scp_factory(tmp_path / "spool", peers=peers)
    assert store(_dest(scp), "SENDER", [mr_slice()]) == [0]
    with pytest.raises(PeerUnavailable, match="rejected"):
        store(_dest(scp), "FAR", [mr_slice()])
    rows = scp.receiver.store.audit_rows()
    assert {(r["event"], r["outcome"], r["calling_ae"]) for r in rows} >= {
        ("received", "stored", "SENDER"),
        ("association", "rejected", "FAR"),
    }


def test_instances_beyond_the_study_limit_get_out_of_resources(scp_factory, tmp_path: Path) -> None:
    limits = LimitsConfig(max_instances_per_study=3)
    scp, _ = scp_factory(tmp_path / "spool", limits=limits)
    first = mr_slice()
    study = [first] + [mr_slice() for _ in range(4)]
    for ds in study:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
    assert store(_dest(scp), "SENDER", study[:3]) == [0, 0, 0]
    with pytest.raises(PeerBusy, match="0xA700"):
        store(_dest(scp), "SENDER", study[3:])
    assert len(list((tmp_path / "spool").rglob("*.dcm"))) == 3
    assert store(_dest(scp), "SENDER", [mr_slice()]) == [0]  # another study is not affected


def test_a_uid_reused_by_another_study_is_refused_with_a_named_status_and_audited(
    scp_factory, tmp_path: Path
) -> None:
    from pynetdicom import AE

    scp, _ = scp_factory(tmp_path / "spool")
    first = mr_slice()
    assert store(_dest(scp), "SENDER", [first]) == [0]
    same_sop = mr_slice(SOPInstanceUID=first.SOPInstanceUID)  # another study, another series
    same_series = mr_slice()
    same_series.SeriesInstanceUID = first.SeriesInstanceUID  # another study
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="AIRCON")
    assert assoc.is_established
    answers = [assoc.send_c_store(ds) for ds in (same_sop, same_series)]
    assoc.release()
    assert [(a.Status, a.ErrorComment) for a in answers] == [
        (0xC211, "SOP Instance UID already stored in another study"),
        (0xC211, "Series Instance UID already belongs to another study"),
    ]
    assert [p.parent.parent.name for p in (tmp_path / "spool").rglob("*.dcm")] == [
        first.StudyInstanceUID
    ]
    refused = wait_for(
        lambda: [r for r in scp.receiver.store.audit_rows() if r["outcome"] == "refused"],
        10,
        what="the audit of the refusals",
    )
    assert sorted((r["detail"], r["instances"]) for r in refused) == [
        ("SOP Instance UID already stored in another study", 1),
        ("Series Instance UID already belongs to another study", 1),
    ]


def test_disk_guard_refuses_with_out_of_resources_and_says_why(
    scp_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scp, touched = scp_factory(tmp_path / "spool", storage=StorageConfig(min_free_mb=1e12))
    with pytest.raises(PeerBusy, match="0xA700"):
        store(_dest(scp), "SENDER", [mr_slice()])
    assert "disk guard" in caplog.text and "min_free_mb" in caplog.text
    assert touched(wait_s=0.5) == [] and not list((tmp_path / "spool").rglob("*.dcm"))
    from gateway.dicom.scu import echo

    assert echo(_dest(scp), "SENDER").ok  # the node still answers


def test_associations_beyond_the_limit_are_rejected_and_idle_ones_are_closed(
    scp_factory, tmp_path: Path
) -> None:
    import socket
    import time

    from pynetdicom import AE

    scp, _ = scp_factory(
        tmp_path / "spool", limits=LimitsConfig(max_associations=3, idle_timeout_s=3)
    )
    ae = AE(ae_title="SENDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", scp.port, ae_title="AIRCON") for _ in range(5)]
    established = [a for a in held if a.is_established]
    assert len(established) == 3 and sum(a.is_rejected for a in held) == 2
    # A raw connection that never sends an A-ASSOCIATE-RQ, and the held associations, which
    # never send anything: all closed by the gateway after the idle timeout.
    raw = socket.create_connection(("127.0.0.1", scp.port), timeout=30)
    deadline = time.monotonic() + 20
    for a in established:  # an association's thread ends when the gateway aborts it
        a.join(max(0.0, deadline - time.monotonic()))
    assert not any(a.is_established for a in established)
    raw.settimeout(20)  # recv() raises TimeoutError if the gateway keeps it open
    t0 = time.monotonic()
    while raw.recv(4096):
        pass  # b"" once the gateway has closed it
    raw.close()
    assert time.monotonic() - t0 < 20

    def accepted_again() -> bool:  # the slots free once the aborted associations' threads end
        try:
            return store(_dest(scp), "SENDER", [mr_slice()]) == [0]
        except PeerUnavailable:
            return False

    wait_for(accepted_again, 20, interval=0.5, what="the association slots to free")


@pytest.mark.parametrize("version", ["3.0.4", "3.0.5"])
def test_accepted_associations_run_event_driven_only_on_the_pinned_pynetdicom(
    scp_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    import pynetdicom
    from pynetdicom import evt
    from pynetdicom._handlers import standard_dimse_recv_handler

    from gateway.dicom import reactor

    monkeypatch.setattr(pynetdicom, "__version__", version)
    installed: list[tuple[object, bool]] = []
    real_install = reactor.install

    def install(assoc: object, incoming: object = None) -> bool:
        installed.append((assoc, real_install(assoc, incoming)))
        return installed[-1][1]

    monkeypatch.setattr(reactor, "install", install)
    scp, touched = scp_factory(tmp_path / "spool")
    first = mr_slice()
    study = [first] + [
        mr_slice(StudyInstanceUID=first.StudyInstanceUID, SeriesInstanceUID=first.SeriesInstanceUID)
        for _ in range(29)
    ]
    assert store(_dest(scp), "SENDER", study) == [0] * 30
    assert touched() == [first.StudyInstanceUID]
    info = scp.receiver.store.study(first.StudyInstanceUID)
    assert info is not None and len(info.series[0].paths) == 30
    ((assoc, event_driven),) = installed
    assert event_driven == (version == "3.0.4")
    handlers = [h for h, _ in assoc.get_handlers(evt.EVT_DIMSE_RECV)]  # type: ignore[attr-defined]
    assert standard_dimse_recv_handler not in handlers


def test_silent_peers_are_still_cut_off_by_the_event_driven_loops(scp_factory, tmp_path: Path):
    import socket

    from pynetdicom import AE

    from gateway.dicom import reactor

    assert reactor.supported()
    scp, _ = scp_factory(tmp_path / "spool", limits=LimitsConfig(idle_timeout_s=0.5))
    with socket.create_connection(("127.0.0.1", scp.port)) as peer:  # never associates
        peer.settimeout(5)
        t0 = time.monotonic()
        try:
            data = peer.recv(1024)
        except ConnectionResetError:
            data = b""
        assert data[:1] in (b"", b"\x07") and time.monotonic() - t0 < 4  # closed or A-ABORT
    ae = AE("SENDER")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="AIRCON")  # associates, then silent
    assert assoc.is_established
    wait_for(lambda: not assoc.is_established, 4, what="the idle association to be aborted")
    assert assoc.is_aborted


def test_released_associations_are_recorded_as_released_not_cut_off(
    scp_factory, tmp_path: Path
) -> None:
    """Defect: the event-driven DUL saw dcmtk close the connection right after our A-RELEASE
    response, before the association thread reported the release: about one association in
    six looked cut off, and its study waited assembly.interrupted_wait_s for a resend."""
    import subprocess

    from tests.conftest import dcmtk_env

    scp, _ = scp_factory(tmp_path / "spool")
    files = []
    for k in range(20):
        ds = mr_slice()
        path = tmp_path / f"i{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    for path in files:
        done = subprocess.run(
            ["storescu", "-aet", "SENDER", "-aec", "AIRCON", "127.0.0.1", str(scp.port), str(path)],
            capture_output=True,
            env=dcmtk_env(),
        )
        assert done.returncode == 0, done.stderr

    def ended() -> list[str] | None:
        rows = scp.receiver.store.audit_rows()
        outcomes = [r["outcome"] for r in rows if r["event"] == "association"]
        return outcomes if len(outcomes) == len(files) else None

    assert wait_for(ended, 20, what="every association's end") == ["released"] * len(files)
