"""The hostile-input corpus (tests/corpus/generate.py) against the running gateway.

Every case of the manifest is sent to one ``aircon serve`` subprocess, each as its manifest says
(pynetdicom sends the files' dataset bytes as they are; raw sockets for the transport cases), and
its expected outcome is checked: C-STORE statuses, association and context acceptance, C-ECHO,
idle connections closed, the job of its study (state, reason) and the RTSTRUCT at the
destination, and that no file appeared outside the spool. Then the gateway must still answer
C-ECHO and still contour a good phantom study. All failures are reported together, per case.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from gateway.demo.node import ReceivingNode
from gateway.demo.phantom import make_phantom, write_dicom_series
from gateway.uids import is_valid_uid
from tests.conftest import GatewayProcess, dcmtk_env, free_port, wait_for
from tests.corpus.generate import Case, Expect, generate, load
from tests.corpus.replay import (
    CLOSE_MARGIN_S,
    GATEWAY_AE,
    IDLE_TIMEOUT_S,
    Observed,
    hold_open,
    raw_sending,
    send_concurrently,
    send_over_one_association,
    timed,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),
    pytest.mark.filterwarnings("ignore:The value length"),
]

STUDY_TIMEOUT_S = 25.0
JOBS_TIMEOUT_S = STUDY_TIMEOUT_S + 300.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    generate(out)
    return out


@pytest.fixture
def sending_raw() -> Iterator[None]:
    with raw_sending():
        yield


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ReceivingNode]:
    n = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC", port=free_port())
    n.start()
    yield n
    n.stop()


def _check(case: Case, obs: Observed) -> list[str]:
    """How ``obs`` differs from the case's expected outcome (empty: as expected)."""
    e = case.expect
    problems = []
    if e.association and obs.association != e.association:
        problems.append(f"association {obs.association}, expected {e.association}")
    if e.context and obs.context != e.context:
        problems.append(f"context {obs.context}, expected {e.context}")
    if e.status and (not obs.statuses or set(obs.statuses) != {e.status}):
        problems.append(f"C-STORE status(es) {sorted(set(obs.statuses))}, expected {e.status}")
    if e.echo and obs.echo != "0x0000":
        problems.append(f"C-ECHO {obs.echo}, expected 0x0000")
    if e.closed:
        if obs.open_s is None:
            problems.append(f"connection not closed within {IDLE_TIMEOUT_S + CLOSE_MARGIN_S:g} s")
        elif e.closed == "after-idle-timeout" and obs.open_s < 0.8 * IDLE_TIMEOUT_S:
            problems.append(f"closed after {obs.open_s:.1f} s, before the idle timeout")
    if e.job:
        job = obs.job or {}
        if obs.jobs != 1:
            problems.append(f"{obs.jobs} job(s) for the study, expected 1")
        reason = job.get("reason") or ""
        words = [w for w in e.reason_words if w.lower() not in reason.lower()]
        if job.get("state") != e.job or (e.reason and e.reason not in reason) or words:
            problems.append(
                f"job {job.get('state')} ({reason[:300]!r}), expected {e.job}"
                + (f" with reason containing {e.reason!r}" if e.reason else "")
                + (f" with the words {list(e.reason_words)}" if e.reason_words else "")
            )
    elif obs.jobs:
        problems.append(f"{obs.jobs} job(s) opened for a study that should have none")
    if obs.rtstructs != int(e.rtstruct):
        problems.append(f"{obs.rtstructs} RTSTRUCT(s) delivered, expected {int(e.rtstruct)}")
    return problems


def _outside_spool(root: Path, spool: Path, allowed: list[Path], markers: set[str]) -> list[str]:
    """Files that should not exist: a spool file not at <UID>/<UID>/<UID>.dcm, a DICOM file
    outside the folders that may hold one, anything whose name carries an escape marker."""
    found = []
    for path in root.rglob("*"):
        if any(m in path.name for m in markers):
            found.append(f"{path} (a path-traversal UID escaped)")
        elif path.is_file() and path.is_relative_to(spool):
            parts = path.relative_to(spool).parts
            uids = [*parts[:-1], parts[-1].removesuffix(".dcm")]
            if (
                len(parts) != 3
                or not path.name.endswith(".dcm")
                or not all(map(is_valid_uid, uids))
            ):
                found.append(f"{path} (not <UID>/<UID>/<UID>.dcm under the spool)")
        elif path.suffix == ".dcm" and not any(path.is_relative_to(a) for a in allowed):
            found.append(f"{path} (a DICOM file outside the spool)")
    return found


def _echoscu(port: int) -> bool:
    r = subprocess.run(
        ["echoscu", "-aet", "ECHOSCU", "-aec", GATEWAY_AE, "127.0.0.1", str(port)],
        capture_output=True,
        env=dcmtk_env(),
        timeout=60,
    )
    return r.returncode == 0


def _finished_jobs(gw: GatewayProcess, study_uids: set[str]) -> dict[str, list[dict[str, Any]]]:
    by_study: dict[str, list[dict[str, Any]]] = {}
    for job in gw.jobs():
        by_study.setdefault(job["study_uid"], []).append(job)

    def finished(uid: str) -> bool:
        return any(j["state"] in ("done", "failed") for j in by_study.get(uid, []))

    return by_study if all(map(finished, study_uids)) else {}


def _rtstructs_by_study(node: ReceivingNode) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in node.files():
        uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        counts[uid] = counts.get(uid, 0) + 1
    return counts


def test_manifest_lists_every_file_and_an_outcome(corpus: Path) -> None:
    cases = load(corpus)
    assert len(cases) >= 40
    assert len({c.name for c in cases}) == len(cases)
    for case in cases:
        assert case.description and case.expect != Expect(), case.name
        assert all((corpus / f).is_file() for f in case.files), case.name
        assert (case.send in ("tcp-idle", "association-idle")) == (not case.files), case.name


@pytest.mark.slow  # 55 cases against a real gateway
def test_corpus_against_the_gateway(
    corpus: Path,
    make_gateway: Any,
    node: ReceivingNode,
    tmp_path: Path,
    sending_raw: None,
) -> None:
    cases = load(corpus)
    gw = make_gateway(
        node.port,
        assembly={"series_quiet_s": 2, "study_timeout_s": STUDY_TIMEOUT_S},
        limits={"idle_timeout_s": IDLE_TIMEOUT_S, "max_associations": 64},
    )
    gw.start()
    started = time.monotonic()
    observed: dict[str, Observed] = {}

    # The idle and garbage connections stay open while every association case is sent.
    held = [c for c in cases if c.send in ("tcp-idle", "association-idle", "tcp-bytes")]
    with ThreadPoolExecutor(len(held)) as pool:
        holding = {c.name: pool.submit(timed, hold_open, gw.port, c, corpus) for c in held}
        for case in cases:
            if case.send == "c-store":
                observed[case.name] = timed(send_over_one_association, gw.port, case, corpus)
        observed |= {name: future.result() for name, future in holding.items()}
    for case in cases:
        if case.send == "concurrent":
            observed[case.name] = timed(send_concurrently, gw.port, case, corpus)
    sent_s = time.monotonic() - started

    with_study = {c.study_uid: c for c in cases if c.study_uid}
    awaited = {
        uid
        for uid, c in with_study.items()
        if c.expect.job and "0x0000" in observed[c.name].statuses
    }
    try:
        jobs = wait_for(
            lambda: _finished_jobs(gw, awaited), JOBS_TIMEOUT_S, interval=1, what="the jobs"
        )
    except AssertionError:
        jobs = _finished_jobs(gw, set())
    rtstructs = _rtstructs_by_study(node)
    for uid, case in with_study.items():
        obs = observed[case.name]
        study_jobs = jobs.get(uid, [])
        obs.jobs, obs.job = len(study_jobs), (study_jobs[-1] if study_jobs else None)
        obs.rtstructs = rtstructs.get(uid, 0)
    outcome_s = time.monotonic() - started

    report = {c.name: _check(c, observed[c.name]) for c in cases}

    # Still serving: C-ECHO, and a good phantom study is contoured and delivered.
    health = []
    if not _echoscu(gw.port):
        health.append("echoscu failed after the corpus")
    good = write_dicom_series(make_phantom(7), tmp_path / "good", seed=7)
    sent = gw.storescu(tmp_path / "good")
    if sent.returncode != 0:
        health.append(f"storescu of a good study failed: {sent.stderr[-500:]}")
    else:
        try:
            by_study = wait_for(
                lambda: _finished_jobs(gw, {good.study_uid}), 300, interval=1, what="good job"
            )
            job = by_study[good.study_uid][-1]
            if job["state"] != "done":
                health.append(f"good study: job {job['state']} ({job['reason']!r})")
            wait_for(lambda: _rtstructs_by_study(node).get(good.study_uid), 60, what="RTSTRUCT")
        except AssertionError as exc:
            health.append(f"good study: {exc}")

    markers = {m for c in cases for m in c.expect.absent}
    cfg = gw.cfg
    allowed = [corpus, cfg.paths.spool, cfg.paths.output, node.folder, tmp_path / "good"]
    health += _outside_spool(tmp_path, cfg.paths.spool, allowed, markers)
    health += _outside_spool(corpus, cfg.paths.spool, allowed, markers)

    lines = [
        f"{'FAIL' if report[c.name] else 'ok  '} {c.name}: "
        + "; ".join([*report[c.name], f"observed: {observed[c.name].summary()}"])
        for c in cases
    ]
    print(
        "\n".join([*lines, *health])
        + f"\nsent in {sent_s:.0f} s, outcomes after {outcome_s:.0f} s, "
        f"total {time.monotonic() - started:.0f} s"
    )
    failed = [line for line in lines if line.startswith("FAIL")]
    assert not failed and not health, "\n".join(failed + health) + "\n" + gw.log()[-3000:]
