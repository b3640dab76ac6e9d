"""The self-test (mercure's canary): the bundled phantom study through the whole chain.

:func:`start` records a ``self_tests`` row and returns its id; a background thread then writes
a fresh copy of the phantom study (new UIDs under ``rtstruct.uid_root`` every run), C-STOREs it
to our own Storage SCP as ``ae_title`` (which must be one of ``peers``), and follows the job the
study gets: routing, assembly, the rule's models and the RTSTRUCT, exactly as for a scanner's
study. Only the delivery differs: the self-tests row makes the job deliver to the destination
the operator chose and nowhere else, or, for a dry run (``""``), to nothing
(:meth:`gateway.db.work.WorkQueries.finish_run`).

The thread polls the database rather than the pipeline telling it: the job may run in another
worker process, and the pipeline keeps no knowledge of self-tests beyond where to deliver. A
self-test passes when its job is done (delivered, or the dry run's "not sent") and fails with
the job's reason, a send failure, or "timed out" after :data:`TIMEOUT_S`.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from gateway.config import DestinationConfig, GatewayConfig
from gateway.db.database import Store
from gateway.db.tables import JobRow
from gateway.errors import GatewayError
from gateway.job import stage_timings

log = logging.getLogger(__name__)

TIMEOUT_S = 900.0
POLL_S = 0.5
# The demo's phantom: the demonstration models were not trained on this seed.
PHANTOM_SEED = 9001
ENDED = ("done", "failed", "cancelled")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def start(
    cfg: GatewayConfig,
    store: Store,
    destination: str,
    by: str,
    *,
    port: int | None = None,
    timeout_s: float = TIMEOUT_S,
    clock: Callable[[], float] = time.time,
) -> int:
    """Record a self-test to ``destination`` (a configured destination; ``""``: a dry run) and
    run it in a background thread; return its id. ``port``: where our SCP listens when it is
    not ``listen.port`` (bound to any free port). Raises ValueError for an unknown destination.

    A self-test that cannot send (our AE title is not a peer) is recorded as failed, with why."""
    if destination and destination not in cfg.destinations:
        known = ", ".join(sorted(cfg.destinations)) or "none"
        raise ValueError(f"unknown destination {destination!r} (known: {known})")
    now = clock()
    store.fail_unfinished_self_tests(f"timed out after {timeout_s:.0f} s", now, now - timeout_s)
    study_uid = str(generate_uid(prefix=cfg.rtstruct.uid_root))
    test_id = store.add_self_test(study_uid, destination, by, now)
    why = cannot_send(cfg)
    if why:
        store.finish_self_test(test_id, False, why, clock())
        log.warning("self-test %d failed: %s", test_id, why)
        return test_id
    target = DestinationConfig(
        ae_title=cfg.ae_title,
        host="127.0.0.1" if cfg.listen.host in WILDCARD_HOSTS else cfg.listen.host,
        port=port or cfg.listen.port,
    )
    log.info(
        "self-test %d study %s started by %s, to %s",
        test_id,
        study_uid,
        by or "-",
        destination or "nothing (dry run)",
    )
    threading.Thread(
        target=_run,
        args=(cfg, store, test_id, study_uid, target, timeout_s, clock),
        name=f"self-test-{test_id}",
        daemon=True,
    ).start()
    return test_id


def cannot_send(cfg: GatewayConfig) -> str:
    """Why our own SCP would refuse the self-test's association ("" when it would not)."""
    peer = next((p for p in cfg.peers if p.ae_title == cfg.ae_title), None)
    if peer is None:
        return (
            f"our AE title {cfg.ae_title} is not among the peers, so our own Storage SCP would "
            "reject the self-test: add it to peers"
        )
    if peer.require_tls:
        return f"peer {cfg.ae_title} requires TLS; the self-test sends on the plain port"
    return ""


def recover(store: Store, clock: Callable[[], float] = time.time) -> list[int]:
    """At start: self-tests still sending or running lost their thread with the last process."""
    now = clock()
    return store.fail_unfinished_self_tests(
        "interrupted: the gateway stopped before the self-test ended", now, now + 1.0
    )


def write_phantom(folder: Path, study_uid: str, uid_root: str) -> list[Path]:
    """The phantom study (T2 and Dixon series) in ``folder`` as study ``study_uid``, with fresh
    series, frame of reference and instance UIDs under ``uid_root``; its files."""
    # A leaf module (numpy, SimpleITK, pydicom): imported here only, see pyproject's contracts.
    from gateway.demo.phantom import make_study, write_study

    written = write_study(
        make_study(PHANTOM_SEED),
        folder,
        seed=PHANTOM_SEED,
        patient_name="SELFTEST^AIRCON",
        patient_id="AIRCON-SELFTEST",
    )
    frame_uid = generate_uid(prefix=uid_root)
    files = []
    for info in written.values():
        series_uid = generate_uid(prefix=uid_root)
        for path in info.files:
            ds = dcmread(path)
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.SOPInstanceUID = generate_uid(prefix=uid_root)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.StudyDescription = "AIRCON self-test (phantom)"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


def _run(
    cfg: GatewayConfig,
    store: Store,
    test_id: int,
    study_uid: str,
    target: DestinationConfig,
    timeout_s: float,
    clock: Callable[[], float],
) -> None:
    began = time.monotonic()
    timings: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="aircon-selftest-") as tmp:
            files = write_phantom(Path(tmp), study_uid, cfg.rtstruct.uid_root)
            timings["prepare"] = round(time.monotonic() - began, 3)
            from gateway.dicom import scu

            scu.store(target, cfg.ae_title, files)
            timings["store"] = round(time.monotonic() - began - timings["prepare"], 3)
    except GatewayError as exc:
        _end(store, test_id, False, f"sending to our own SCP failed: {exc}", clock, timings)
        return
    except Exception as exc:
        log.exception("self-test %d: unexpected error", test_id)
        _end(store, test_id, False, f"internal error: {type(exc).__name__}: {exc}", clock, timings)
        return
    store.update_self_test(test_id, state="running", timings=timings)
    sent = time.monotonic()
    try:
        job, why = _follow(store, test_id, study_uid, began + timeout_s)
    except Exception as exc:
        log.exception("self-test %d: unexpected error", test_id)
        _end(store, test_id, False, f"internal error: {type(exc).__name__}: {exc}", clock, timings)
        return
    ended = time.monotonic()
    timings["job"] = round(ended - sent, 3)
    timings["total"] = round(ended - began, 3)
    if job is not None:
        for stage, seconds in stage_timings(dict(job.stages or {}), job.job_outcome).items():
            timings[f"stage.{stage}"] = seconds
    if why:
        _end(store, test_id, False, why, clock, timings, job)
    elif job is not None and job.state == "done":
        _end(store, test_id, True, _passed(store, job), clock, timings, job)
    else:
        state, reason = (job.state, job.reason) if job else ("", "")
        _end(store, test_id, False, reason or f"job {state}", clock, timings, job)


def _follow(
    store: Store, test_id: int, study_uid: str, deadline: float
) -> tuple[JobRow | None, str]:
    """Wait for the study's job to end: (the job, "") or (the job if any, why it never will)."""
    job_id = None
    while True:
        study, job = store.self_test_study(study_uid)
        if job is not None:
            if job.id != job_id:
                job_id = job.id
                store.update_self_test(test_id, job_id=job_id)
            if job.state in ENDED:
                return job, ""
        elif study is not None and study.reason.startswith("no rule matches"):
            return None, f"the phantom study was not processed: {study.reason}"
        if time.monotonic() >= deadline:
            where = f"job {job.id} {job.state}: {job.reason}" if job else "no job was opened"
            return job, f"timed out ({where})"
        time.sleep(POLL_S)


def _passed(store: Store, job: JobRow) -> str:
    delivered = [d.destination for d in store.deliveries_for(job.id) if d.state == "delivered"]
    if not delivered:
        return f"job {job.id} done: {job.reason or 'nothing sent'}"
    return f"job {job.id} done: delivered to {', '.join(delivered)}" + (
        f"; {job.reason}" if job.reason else ""
    )


def _end(
    store: Store,
    test_id: int,
    passed: bool,
    detail: str,
    clock: Callable[[], float],
    timings: dict[str, float],
    job: JobRow | None = None,
) -> None:
    if store.finish_self_test(
        test_id, passed, detail, clock(), timings, job.id if job is not None else None
    ):
        log.log(
            logging.INFO if passed else logging.WARNING,
            "self-test %d %s: %s",
            test_id,
            "passed" if passed else "failed",
            detail,
        )
