"""Rows behind the acknowledgement: the instance writer (group commit, order, drain, failures)
and admission from memory (limits seeded from the database, UID conflicts before anything is
stored)."""

from __future__ import annotations

import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.exc import OperationalError

from gateway.config import LimitsConfig, StorageConfig
from gateway.db.database import Store
from gateway.db.reception import Received
from gateway.errors import OutOfResources, UidConflict
from gateway.receive.receiver import Receiver, describe_instance
from gateway.receive.recovery import recover_spool
from gateway.receive.spool import Spool
from gateway.receive.writer import InstanceWriter
from tests.conftest import mr_slice


def _encoded(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")


def _receiver(store: Store, tmp_path: Path, **limits: int) -> Receiver:
    spool = Spool(tmp_path / "spool")
    return Receiver(
        spool, store, limits=LimitsConfig(**limits), storage=StorageConfig(min_free_mb=0)
    )


def _study(n: int, series: int = 1) -> list[Dataset]:
    study, uids = generate_uid(), [generate_uid() for _ in range(series)]
    return [mr_slice(StudyInstanceUID=study, SeriesInstanceUID=uids[k % series]) for k in range(n)]


def _send(rx: Receiver, ds: Dataset, first: bool = False) -> None:
    rx.accept(ds, _encoded(ds), "SCANNER", "AIRCON", opens=lambda _: first)


def _instances(store: Store, study_uid: str) -> int:
    return {s["study_uid"]: s["instances"] for s in store.list_studies()}.get(study_uid, 0)


def test_a_group_of_rows_is_written_in_one_transaction(tmp_path: Path, database_url: str) -> None:
    store = Store(database_url)
    writer = InstanceWriter(store, linger_s=0.3)
    sent = _study(40, series=2)
    now = time.time()
    writer.start()
    for k, ds in enumerate(sent):
        rec = describe_instance(ds, f"/spool/{k}.dcm")
        writer.submit(Received(rec, "SCANNER", "AIRCON", now + k, opens_association=k == 0))
    assert writer.flush(timeout=10)
    writer.stop()
    assert writer.groups == 1
    study = store.study(sent[0].StudyInstanceUID)
    assert study is not None and study.open_associations == 1 and study.calling_ae == "SCANNER"
    assert sorted(len(s.paths) for s in study.series) == [20, 20]
    assert (study.first_received_at, study.last_received_at) == (now, now + 39)


def test_an_association_end_is_recorded_after_its_instances(
    tmp_path: Path, database_url: str
) -> None:
    store = Store(database_url)
    rx = _receiver(store, tmp_path)
    rx.writer.linger_s = 0.5  # rows stay queued while the association ends
    seen: list[int] = []
    ended = store.association_ended

    def spy(study_uids: Any, clean: bool, now: float) -> None:
        seen.append(_instances(store, study_uids[0]))
        ended(study_uids, clean, now)

    store.association_ended = spy  # type: ignore[method-assign]
    sent = _study(5)
    rx.start()
    try:
        for k, ds in enumerate(sent):
            _send(rx, ds, first=k == 0)
        stored = {(sent[0].StudyInstanceUID, sent[0].SeriesInstanceUID): 5}
        rx.association_ended("SCANNER", "127.0.0.1", stored, {}, False)
    finally:
        rx.stop()
    assert seen == [5]  # the check it schedules sees every instance
    study = store.study(sent[0].StudyInstanceUID)
    assert study is not None and study.open_associations == 0
    assert [uid for uid, _ in store.due_checks(time.time() + 1)] == [sent[0].StudyInstanceUID]


def test_stop_writes_every_queued_row(tmp_path: Path, database_url: str) -> None:
    store = Store(database_url)
    rx = _receiver(store, tmp_path)
    rx.writer.linger_s = 30.0
    sent = _study(3)
    rx.start()
    for ds in sent:
        _send(rx, ds)
    assert _instances(store, sent[0].StudyInstanceUID) == 0  # acknowledged, row still queued
    t0 = time.monotonic()
    rx.stop()
    assert time.monotonic() - t0 < 5 and not rx.writer.running
    assert _instances(store, sent[0].StudyInstanceUID) == 3


def test_a_failing_database_is_retried_its_rows_held_and_reception_paused(
    tmp_path: Path, database_url: str
) -> None:
    store = Store(database_url)
    writer = InstanceWriter(store, retry_delays_s=(0.0, 0.0))
    real = store.record_instances
    failures = iter([True, True])

    def flaky(group: Any) -> None:
        if next(failures, False):
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        real(group)

    store.record_instances = flaky  # type: ignore[method-assign]
    sent = _study(2)
    writer.write([Received(describe_instance(ds, "p"), "S", "A", 1.0) for ds in sent])
    assert writer.groups == 1 and _instances(store, sent[0].StudyInstanceUID) == 2

    # A database that takes nothing: the rows are held (never dropped while the process
    # lives), reception answers 0xA700 meanwhile, and the held rows are written once it is back.
    rx = _receiver(store, tmp_path)
    rx.writer.retry_delays_s = ()
    rx.writer.hold_s = 0.2
    record_instances, record_instance = store.record_instances, store.record_instance

    def down(*_: Any, **__: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    store.record_instances = down  # type: ignore[method-assign]
    store.record_instance = down  # type: ignore[method-assign]
    held = _study(3)
    rx.start()
    try:
        for ds in held[:2]:
            _send(rx, ds)
        assert not rx.writer.flush(timeout=10)  # held, not written
        assert rx.writer.failing and rx.writer.running and rx.writer.lost == 0
        with pytest.raises(OutOfResources, match="send again later"):
            _send(rx, held[2])
        store.record_instances = record_instances  # type: ignore[method-assign]
        store.record_instance = record_instance  # type: ignore[method-assign]
        wait = time.monotonic() + 10
        while rx.writer.failing and time.monotonic() < wait:
            time.sleep(0.05)
        assert rx.writer.flush(timeout=10) and not rx.writer.failing
        assert _instances(store, held[0].StudyInstanceUID) == 2
        _send(rx, held[2])  # taken again
    finally:
        rx.stop()
    assert _instances(store, held[0].StudyInstanceUID) == 3 and rx.writer.lost == 0

    # Stopped while the database still takes nothing: the spool recovery at the next start
    # records what was acknowledged (as after a SIGKILL after the acknowledgement).
    rx = _receiver(store, tmp_path)
    rx.writer.retry_delays_s = ()
    store.record_instances = down  # type: ignore[method-assign]
    store.record_instance = down  # type: ignore[method-assign]
    lost = _study(2)
    rx.start()
    for ds in lost:
        _send(rx, ds)
    rx.stop()
    assert rx.writer.lost == 2 and _instances(Store(database_url), lost[0].StudyInstanceUID) == 0
    restarted = _receiver(Store(database_url), tmp_path)
    assert recover_spool(restarted.spool, restarted.store) == 1
    assert _instances(restarted.store, lost[0].StudyInstanceUID) == 2


def test_the_first_instance_of_an_association_marks_its_study_as_being_sent_at_once(
    tmp_path: Path, database_url: str
) -> None:
    """Its row is written behind the acknowledgement, but a study check must see at once
    that an association is sending the study (else a check at the quiet deadline could fix a
    job's inputs while the new series is still arriving)."""
    store = Store(database_url)
    rx = _receiver(store, tmp_path)
    rx.writer.linger_s = 30.0
    sent = _study(2)
    rx.start()
    try:
        _send(rx, sent[0], first=True)
        study = store.study(sent[0].StudyInstanceUID)
        assert study is not None and study.open_associations == 1
        assert _instances(store, sent[0].StudyInstanceUID) == 0  # the row is still queued
        _send(rx, sent[1])
        stored = {(sent[0].StudyInstanceUID, sent[0].SeriesInstanceUID): 2}
        rx.association_ended("SCANNER", "127.0.0.1", stored, {}, True)
    finally:
        rx.stop()
    study = store.study(sent[0].StudyInstanceUID)
    assert study is not None and study.open_associations == 0
    assert _instances(store, sent[0].StudyInstanceUID) == 2


def test_limits_count_from_the_database_then_from_memory(tmp_path: Path, database_url: str) -> None:
    store = Store(database_url)
    sent = _study(5)
    earlier = _receiver(store, tmp_path)
    for ds in sent[:2]:
        _send(earlier, ds)  # recorded by an earlier process
    rx = _receiver(store, tmp_path, max_instances_per_study=3)
    rx.writer.linger_s = 30.0  # nothing new reaches the database while we send
    rx.start()
    try:
        _send(rx, sent[0])  # a resend of a recorded instance takes no new quota
        _send(rx, sent[2])
        assert rx.admission.usage(sent[0].StudyInstanceUID)[0] == 3
        with pytest.raises(OutOfResources, match="max_instances_per_study"):
            _send(rx, sent[3])
        _send(rx, sent[2])  # nor does a resend of one still queued
    finally:
        rx.stop()
    assert _instances(store, sent[0].StudyInstanceUID) == 3
    spooled = {p.stem for p in (tmp_path / "spool").rglob("*.dcm")}
    assert sent[3].SOPInstanceUID not in spooled


def test_a_byte_limit_refuses_before_anything_is_stored(tmp_path: Path, database_url: str) -> None:
    store = Store(database_url)
    sent = _study(3)
    size = len(_encoded(sent[0]))
    rx = _receiver(store, tmp_path, max_bytes_per_study=2 * size)
    for ds in sent[:2]:
        _send(rx, ds)
    with pytest.raises(OutOfResources, match="max_bytes_per_study"):
        _send(rx, sent[2])
    assert rx.admission.usage(sent[0].StudyInstanceUID) == (2, 2 * size)


@pytest.mark.parametrize("where", ["database", "memory"])
def test_a_uid_of_another_study_is_refused_before_it_is_stored(
    tmp_path: Path, database_url: str, where: str
) -> None:
    store = Store(database_url)
    first = _study(1)[0]
    if where == "database":
        _send(_receiver(store, tmp_path), first)  # another process recorded it
    rx = _receiver(store, tmp_path)
    rx.writer.linger_s = 30.0  # "memory": its row not yet written when the second arrives
    rx.start()
    try:
        if where == "memory":
            _send(rx, first, first=True)
        reused = mr_slice(SOPInstanceUID=first.SOPInstanceUID)
        with pytest.raises(UidConflict, match="SOP Instance UID already stored in another study"):
            _send(rx, reused)
        series = mr_slice(SeriesInstanceUID=first.SeriesInstanceUID)
        with pytest.raises(UidConflict, match="Series Instance UID already belongs to another"):
            _send(rx, series)
    finally:
        rx.stop()
    assert not (tmp_path / "spool" / reused.StudyInstanceUID).exists()
    assert not (tmp_path / "spool" / series.StudyInstanceUID).exists()
    assert [s["study_uid"] for s in store.list_studies()] == [first.StudyInstanceUID]
    # The refused studies are not kept in memory (a sender of refused UIDs must not grow it).
    assert reused.StudyInstanceUID not in rx.admission._studies
    assert series.StudyInstanceUID not in rx.admission._studies


def test_concurrent_senders_of_one_study_never_pass_its_limit(
    tmp_path: Path, database_url: str
) -> None:
    store = Store(database_url)
    rx = _receiver(store, tmp_path, max_instances_per_study=10)
    sent = _study(24)
    refused: list[str] = []

    def sender(part: list[Dataset]) -> None:
        for ds in part:
            try:
                _send(rx, ds)
            except OutOfResources:
                refused.append(ds.SOPInstanceUID)

    rx.start()
    threads = [threading.Thread(target=sender, args=(sent[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rx.stop()
    assert len(refused) == 14 and _instances(store, sent[0].StudyInstanceUID) == 10


def test_a_row_another_process_recorded_elsewhere_costs_only_itself(
    tmp_path: Path, database_url: str
) -> None:
    store = Store(database_url)
    other = _study(1)[0]
    store.record_instance(describe_instance(other, "p"), "OTHER", "AIRCON")  # another process
    sent = _study(3)
    sent[1].SOPInstanceUID = other.SOPInstanceUID  # admitted there before this row existed
    writer = InstanceWriter(store)
    writer.write([Received(describe_instance(ds, "p"), "S", "A", 1.0) for ds in sent])
    assert writer.lost == 1 and _instances(store, sent[0].StudyInstanceUID) == 2
    assert _instances(store, other.StudyInstanceUID) == 1  # its rows untouched
