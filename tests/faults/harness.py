"""Crash harness: kill ``aircon serve`` at chosen or random instants and check what survives.

One trial runs a real gateway subprocess (fresh work folder, a :class:`ReceivingNode` as the
planning system), sends one or more phantom studies with dcmtk ``storescu -v``, and kills the
gateway with SIGKILL:

- at a crash point of the product (config ``faults.crash_at``: the process kills itself the n-th
  time it reaches the point; ``gateway.config.CRASH_POINTS``);
- from outside (:data:`EXTERNAL`): after the n-th instance ``storescu`` saw acknowledged
  (mid-association), while a model is running (a job between its ``volume`` and ``segment``
  stages), after a random delay from the start of the send, or from the destination itself while
  it holds the n-th RTSTRUCT it received, before it answers.

Optionally it restarts the gateway with a second fault armed (a crash during the recovery or the
resend) and kills it again. Then it restarts the gateway without faults, re-sends every study
whose send did not finish (a scanner retries when its association breaks; optionally only some
seconds later), waits until the gateway has settled, and checks:

(a) lost: every instance ``storescu`` saw acknowledged is in the spool (same pixel data) and in
    the database;
(b) undelivered: every study's latest job ends ``done`` with every delivery ``delivered``, and
    the destination holds its RTSTRUCT;
(c) duplicated: the destination holds exactly one RTSTRUCT SOP Instance UID per study and rule
    (the same UID received twice is a replacement, not a duplicate), the one the job made.

With one sender, a receive crash point must also fire at the instance it names (``misplaced``).

Used by ``tests/faults/test_crash.py`` and ``bench/faults.py``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from gateway.config import CRASH_POINTS
from gateway.db.database import Store
from gateway.db.records import TERMINAL, DeliveryState, JobState
from gateway.demo.launcher import Gateway, GatewayNotStarted, free_port, write_config
from gateway.demo.node import ReceivingNode
from tests.conftest import REPO, dcmtk_env, rule

# Kills from outside the gateway process.
EXTERNAL = (
    "external.after_acks",  # the harness, right after storescu saw the n-th success response
    "external.inference",  # the harness, while the n-th job is between 'volume' and 'segment'
    "external.delay",  # the harness, ``delay_s`` after the send started
    "node.on_store",  # the destination, holding its n-th RTSTRUCT, before it answers
)
RULE = "pelvis-mr"
INSTANCES = 24  # slices of the phantom series
_TERMINAL = {state.value for state in TERMINAL}
# The models a trial can run: the bundled nnU-Net demo model (loading torch and nnU-Net takes
# ~20 s of a 2-core machine's start-up, inference ~1-2 s), and a python model written here that
# thresholds the T2 after a pause (the inference window), loaded at once.
NNUNET_MODEL = "pelvis-demo"
QUICK_MODEL = "fault-threshold"
_QUICK_YAML = """\
# Written by tests/faults/harness.py: a python model for crash trials.
name: fault-threshold
kind: python
version: "1.0"
description: Crash-trial model; label 1 above a percentile of the T2, after a pause.
python:
  entry: fault_threshold:segment
  options: {level: 95, seconds: 1.5}
inputs:
  - name: T2
    primary: true
    select: {Modality: "^MR$"}
labels:
  1: {name: Bright, color: [255, 255, 0], type: CONTROL}
"""
_QUICK_PY = '''\
"""Crash-trial model: label 1 above the given percentile, after sleeping ``seconds``."""

import time

import numpy as np


def segment(channels, grid, *, device="cpu", threads=1, level=95, seconds=1.5):
    time.sleep(seconds)
    return (channels[0] > np.percentile(channels[0], level)).astype(np.uint8)
'''


def write_models(folder: Path) -> Path:
    """A models folder: a link to the bundled pelvis-demo and the quick python model."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / NNUNET_MODEL
    if not link.exists():
        link.symlink_to(REPO / "models" / NNUNET_MODEL)
    quick = folder / QUICK_MODEL
    quick.mkdir(exist_ok=True)
    (quick / "model.yaml").write_text(_QUICK_YAML)
    (quick / "fault_threshold.py").write_text(_QUICK_PY)
    return folder


def gateway_overrides(models: Path, model: str) -> dict[str, Any]:
    """The small config of the trials: short quiet time, quick and many delivery retries."""
    return {
        "assembly": {"series_quiet_s": 2, "study_timeout_s": 120},
        "delivery": {
            "max_attempts": 20,
            "backoff_base_s": 0.5,
            "backoff_max_s": 2,
            "timeout_s": 10,
        },
        "paths": {"models": str(models)},
        "segmentation": {"device": "cpu"},  # 'auto' would import torch to ask for CUDA
        "rules": [rule(RULE, [model])],
        "storage": {"min_free_mb": 100},
    }


@dataclass(frozen=True)
class Fault:
    """Where a trial kills the gateway: a crash point or an external kill (see module doc)."""

    where: str
    n: int = 1
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.where not in CRASH_POINTS + EXTERNAL:
            raise ValueError(f"unknown fault {self.where!r}")
        if self.n < 1:
            raise ValueError("n must be at least 1")

    @property
    def is_crash_point(self) -> bool:
        return self.where in CRASH_POINTS

    def __str__(self) -> str:
        if self.where == "external.delay":
            return f"{self.where}({self.delay_s:.2f} s)"
        return f"{self.where}#{self.n}"


def random_fault(rng: random.Random, studies: int) -> Fault:
    """A random crash point or external kill with an n that the trial reaches."""
    where = rng.choice(CRASH_POINTS + EXTERNAL)
    if where.startswith("receive.") or where == "external.after_acks":
        return Fault(where, rng.randint(1, INSTANCES * studies))
    if where == "external.delay":  # half within the send (~0.5 s a study), half any time
        return Fault(where, delay_s=rng.uniform(0.0, 0.6 * studies if rng.random() < 0.5 else 8.0))
    return Fault(where, rng.randint(1, studies))


# ---------------------------------------------------------------------------------------------
# Studies


@dataclass(frozen=True)
class Study:
    """One phantom study on disk: a single T2 series, one file per instance."""

    folder: Path
    study_uid: str
    series_uid: str
    sop_by_name: dict[str, str] = field(hash=False)  # file name -> SOP Instance UID

    @property
    def sop_uids(self) -> set[str]:
        return set(self.sop_by_name.values())

    def source(self, sop_uid: str) -> Path:
        name = next(n for n, u in self.sop_by_name.items() if u == sop_uid)
        return self.folder / name


def write_template(folder: Path, seed: int = 7) -> Path:
    """Write the phantom T2 series once; trials clone it with new UIDs."""
    from gateway.demo.phantom import make_phantom, write_dicom_series

    if not (folder.is_dir() and len(list(folder.glob("*.dcm"))) == INSTANCES):
        write_dicom_series(make_phantom(seed), folder, seed=seed)
    return folder


def clone_study(template: Path, folder: Path) -> Study:
    """A copy of the template series with its own Study, Series, Frame of Reference and SOP
    Instance UIDs (a new patient visit, as far as the gateway can tell)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    sop_by_name: dict[str, str] = {}
    for src in sorted(template.glob("*.dcm")):
        ds = dcmread(src)
        sop_uid = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.save_as(folder / src.name, enforce_file_format=True)
        sop_by_name[src.name] = str(sop_uid)
    return Study(folder, str(study_uid), str(series_uid), sop_by_name)


# ---------------------------------------------------------------------------------------------
# storescu


_SENDING = re.compile(r"Sending file: (\S+)")
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


class Sender:
    """``storescu -v`` sending one study; records which instances were acknowledged.

    Each "Sending file: F" line followed by "Received Store Response (Success)" is one
    acknowledged instance. ``on_ack`` is called (from the reader thread) after each one.
    """

    def __init__(self, study: Study, port: int, on_ack: Callable[[str], None] | None = None):
        self.study = study
        self.port = port
        self.on_ack = on_ack
        self.acked: list[str] = []
        self.statuses: Counter[str] = Counter()
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> Sender:
        self.proc = subprocess.Popen(
            ["storescu", "-v", "-aet", "STORESCU", "-aec", "AIRCON"]
            + ["-to", "10", "-ta", "30", "-td", "60", "+sd", "+r"]
            + ["127.0.0.1", str(self.port), str(self.study.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,  # dcmtk's log ("I: ...") goes to stderr
            text=True,
            env=dcmtk_env(),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        sending: str | None = None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if m := _SENDING.search(line):
                sending = Path(m.group(1)).name
            elif (m := _RESPONSE.search(line)) and sending is not None:
                self.statuses[m.group(1)] += 1
                if m.group(1) == "Success":
                    uid = self.study.sop_by_name[sending]
                    self.acked.append(uid)
                    if self.on_ack is not None:
                        self.on_ack(uid)
                sending = None

    def wait(self, timeout: float = 120) -> int:
        assert self.proc is not None and self._reader is not None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            self.lines.append(f"(harness: storescu killed after {timeout:.0f} s)")
        self._reader.join(10)
        return rc

    @property
    def complete(self) -> bool:
        return set(self.acked) == self.study.sop_uids

    def tail(self, n: int = 6) -> str:
        return " | ".join(line for line in self.lines[-n:] if not line.startswith("XMIT"))


# ---------------------------------------------------------------------------------------------
# A trial


@dataclass
class TrialResult:
    name: str
    fault: Fault
    studies: int
    second: Fault | None = None  # a second kill during recovery
    reached: bool = False  # the fault killed the gateway as planned
    acked: int = 0
    resent: int = 0  # studies sent again after the restart
    lost: list[str] = field(default_factory=list)  # acknowledged SOP UIDs not kept
    duplicated: dict[str, list[str]] = field(default_factory=dict)  # study -> RTSTRUCT UIDs
    undelivered: dict[str, str] = field(default_factory=dict)  # study -> why
    misplaced: list[str] = field(default_factory=list)  # a crash point fired elsewhere
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    work: Path | None = None

    @property
    def ok(self) -> bool:
        failures = self.lost or self.duplicated or self.undelivered or self.misplaced
        return self.reached and not failures

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        fault = f"{self.fault}, then {self.second}" if self.second else str(self.fault)
        text = (
            f"{self.name}: {fault} studies={self.studies} acked={self.acked} "
            f"resent={self.resent} lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"undelivered={len(self.undelivered)} {self.seconds:.1f} s {verdict}"
        )
        if not self.reached:
            text += " (fault not reached)"
        return text

    def report(self) -> str:
        out = [self.line()]
        out += [f"  lost: {uid}" for uid in self.lost]
        out += [f"  duplicated: study {s}: {uids}" for s, uids in self.duplicated.items()]
        out += [f"  undelivered: study {s}: {why}" for s, why in self.undelivered.items()]
        out += [f"  crash point misplaced: {m}" for m in self.misplaced]
        out += [f"  note: {n}" for n in self.notes]
        if self.work is not None and not self.ok:
            out.append(f"  work folder (gateway.log, aircon.db, spool): {self.work}")
        return "\n".join(out)


class CrashHarness:
    """Runs trials under ``root`` (one sub-folder each) from one phantom template."""

    def __init__(
        self,
        root: Path,
        template: Path,
        *,
        model: str = QUICK_MODEL,
        crash_timeout_s: float = 120.0,
        settle_timeout_s: float = 180.0,
        log: Callable[[str], None] = lambda _msg: None,
    ):
        self.root = root
        self.template = template
        self.models = write_models(root / "models")
        self.model = model
        self.crash_timeout_s = crash_timeout_s
        self.settle_timeout_s = settle_timeout_s
        self.log = log

    def run(
        self,
        name: str,
        fault: Fault,
        studies: int = 1,
        *,
        second: Fault | None = None,
        resend_delay_s: float = 0.0,
        stagger_s: float = 0.3,
        model: str | None = None,
        keep: bool = True,
    ) -> TrialResult:
        """One trial: start with ``fault`` armed, send, kill; restart (with ``second`` armed, if
        given: a crash during recovery and the resend, then restart again); resend the broken
        sends ``resend_delay_s`` after the restart; settle; check.

        ``studies`` are sent concurrently (one storescu each, the next ``stagger_s`` later).
        ``model``: the rule's model (default: the harness's). The work folder is removed
        afterwards when the trial passed and ``keep`` is false.
        """
        t0 = time.monotonic()
        work = self.root / name
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        result = TrialResult(name, fault, studies, second=second, work=work)
        batch = [clone_study(self.template, work / "send" / f"study{i}") for i in range(studies)]
        node = ReceivingNode(work / "planning", ae_title="ORTHANC", port=free_port())
        node.start()
        overrides = gateway_overrides(self.models, model or self.model)
        gw = Gateway(
            write_config(work, free_port(), destination_port=node.port, overrides=overrides)
        )
        spool, quiet = gw.cfg.paths.spool, gw.cfg.assembly.series_quiet_s
        acked: set[str] = set()
        complete: set[str] = set()  # studies whose every instance was acknowledged
        try:
            for round_, f in enumerate([fault] + ([second] if second else [])):
                _arm(gw.config_path, f)
                to_send = [s for s in batch if s.study_uid not in complete]
                mark = _log_size(gw)
                if _start(gw):
                    if round_ and to_send and resend_delay_s:
                        time.sleep(resend_delay_s)
                    senders, reached = self._crash(
                        gw, node, to_send, batch, f, stagger_s, quiet, mark, result
                    )
                else:  # a crash point in the recovery, before the gateway answered C-ECHO
                    senders, reached = [], f.is_crash_point and _crash_logged(gw, f, mark)
                    if not reached:
                        result.notes.append(f"gateway died while starting: {gw.log()[-1500:]}")
                if round_ == 0:
                    result.reached = reached
                    result.acked = sum(len(x.acked) for x in senders)
                else:
                    result.resent += len(senders)
                    if not reached:
                        result.notes.append(f"second fault {f} not reached")
                acked |= {uid for x in senders for uid in x.acked}
                complete |= {x.study.study_uid for x in senders if x.complete}
                node.on_store = None
                self._check_kept(gw, spool, batch, acked, result, before_restart=True)

            _arm(gw.config_path, None)
            gw.start()
            incomplete = [s for s in batch if s.study_uid not in complete]
            if incomplete and resend_delay_s:
                time.sleep(resend_delay_s)
            for study in incomplete:
                result.resent += 1
                acked |= self._resend(study, gw.port, result)
            self._settle(gw, quiet, batch, result)
            self._check_kept(gw, spool, batch, acked, result, before_restart=False)
            self._check_delivered(gw, node, batch, result)
            _scan_log(gw, result)
        except Exception as exc:  # noqa: BLE001 - a harness failure is a failed trial, reported
            result.undelivered["*"] = f"harness error: {type(exc).__name__}: {exc}"
        finally:
            gw.stop()
            node.stop()
        result.seconds = time.monotonic() - t0
        if result.ok and not keep:
            shutil.rmtree(work, ignore_errors=True)
        return result

    # -- the kill --------------------------------------------------------------------------------

    def _crash(
        self,
        gw: Gateway,
        node: ReceivingNode,
        to_send: Sequence[Study],
        batch: Sequence[Study],
        fault: Fault,
        stagger_s: float,
        quiet: float,
        log_mark: int,
        result: TrialResult,
    ) -> tuple[list[Sender], bool]:
        """Send ``to_send`` and wait until ``fault`` kills the gateway; (senders, reached). When
        the fault cannot happen any more (every study of ``batch`` settled), the harness kills
        the gateway itself."""
        assert gw.proc is not None
        proc = gw.proc
        planned = threading.Event()  # the fault's own kill happened
        done = threading.Event()  # the gateway is dead: no late external kill

        def kill(why: str) -> None:
            if done.is_set() or planned.is_set():
                return
            planned.set()
            self.log(f"{result.name}: SIGKILL ({why})")
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        lock = threading.Lock()
        acks = [0]

        def on_ack(_uid: str) -> None:
            with lock:
                acks[0] += 1
                if fault.where == "external.after_acks" and acks[0] == fault.n:
                    kill(f"after {fault.n} acknowledged instance(s)")

        if fault.where == "node.on_store":
            stores = [0]

            def on_store(ds: Dataset) -> None:
                stores[0] += 1
                if stores[0] == fault.n:
                    kill(f"destination holding RTSTRUCT {ds.SOPInstanceUID}")
                    proc.wait(10)  # then answer a dead peer

            node.on_store = on_store

        senders = []
        for i, study in enumerate(to_send):
            if i:
                time.sleep(stagger_s)
            senders.append(Sender(study, gw.port, on_ack).start())
        timer: threading.Timer | None = None
        if fault.where == "external.delay":
            timer = threading.Timer(fault.delay_s, kill, args=(f"{fault.delay_s:.2f} s",))
            timer.start()
        if fault.where == "external.inference":
            threading.Thread(
                target=self._kill_in_inference,
                args=(gw, fault.n, done, kill, result),
                daemon=True,
            ).start()

        st = gw.store()
        deadline = time.monotonic() + self.crash_timeout_s
        gave_up = ""
        while proc.poll() is None:
            time.sleep(0.5)
            if planned.is_set() or (timer is not None and timer.is_alive()):
                continue  # the kill is on its way, or still to come
            if fault.is_crash_point and _crash_logged(gw, fault, log_mark):
                continue
            sent = all(x.proc is not None and x.proc.poll() is not None for x in senders)
            if sent and not any(_unsettled(st, study, quiet) for study in batch):
                gave_up = "every study settled"
            elif time.monotonic() > deadline:
                gave_up = f"{self.crash_timeout_s:.0f} s passed"
            if gave_up:
                if proc.poll() is not None:
                    gave_up = ""  # it died meanwhile: by the fault, judged below
                    break
                done.set()
                proc.kill()
                proc.wait()
        done.set()
        if timer is not None:
            timer.cancel()
        if fault.is_crash_point:
            reached = _crash_logged(gw, fault, log_mark)
        else:
            reached = planned.is_set()
        if gave_up:
            result.notes.append(f"{fault} not reached ({gave_up}): the harness killed the gateway")
        elif not reached:
            result.notes.append(
                f"gateway died on its own (rc {proc.returncode}): {gw.log()[-1500:]}"
            )
        for x in senders:
            rc = x.wait(60)
            if (
                reached
                and len(senders) == 1
                and fault.where in ("receive.before_ack", "receive.after_ack")
            ):
                _check_receive_point(fault, len(x.acked), result)
            if not x.complete:
                result.notes.append(
                    f"send of {x.study.folder.name} broke (rc {rc}) after {len(x.acked)} "
                    f"acknowledged: {x.tail()}"
                )
            elif rc != 0:
                result.notes.append(f"send of {x.study.folder.name}: all acknowledged, rc {rc}")
        return senders, reached and not gave_up

    def _kill_in_inference(
        self,
        gw: Gateway,
        n: int,
        stop: threading.Event,
        kill: Callable[[str], None],
        result: TrialResult,
    ) -> None:
        """Kill while the n-th job not finished before this round is between its 'volume' and
        'segment' stages (its models run); if it got past unseen, kill at once (noted)."""
        st = gw.store()
        finished = {j.id for j in st.list_jobs(limit=100000) if j.state in _TERMINAL}
        while not stop.is_set():
            jobs = sorted((j for j in st.list_jobs() if j.id not in finished), key=lambda j: j.id)
            if len(jobs) >= n:
                job = jobs[n - 1]
                if job.state == JobState.RUNNING.value and "volume" in job.stages:
                    if "segment" not in job.stages:
                        kill(f"job {job.id} in inference")
                        return
                if "segment" in job.stages:
                    result.notes.append(f"job {job.id} passed inference unseen ({job.state})")
                    kill(f"job {job.id} {job.state}, after inference")
                    return
            time.sleep(0.03)

    # -- after the restart -----------------------------------------------------------------------

    def _resend(self, study: Study, port: int, result: TrialResult) -> set[str]:
        """Send the whole study again until every instance is acknowledged (up to 5 tries)."""
        acked: set[str] = set()
        for attempt in range(5):
            s = Sender(study, port).start()
            rc = s.wait(120)
            acked |= set(s.acked)
            if s.complete:
                return acked
            result.notes.append(f"resend {attempt + 1} of {study.folder.name}: rc {rc} {s.tail()}")
            time.sleep(2)
        result.undelivered[study.study_uid] = "the sender could not resend the study"
        return acked

    def _settle(
        self, gw: Gateway, quiet: float, batch: Sequence[Study], result: TrialResult
    ) -> None:
        """Wait until every study's work is finished: its latest job terminal, with its inputs
        fixed after the last instance arrived, and the quiet time past."""
        st = gw.store()
        deadline = time.monotonic() + self.settle_timeout_s
        pending: dict[str, str] = {}
        while time.monotonic() < deadline:
            if gw.proc is not None and gw.proc.poll() is not None:
                raise RuntimeError(f"gateway exited after the restart: {gw.log()[-2000:]}")
            pending = {s.study_uid: why for s in batch if (why := _unsettled(st, s, quiet))}
            if not pending:
                return
            time.sleep(0.5)
        for study_uid, why in pending.items():
            result.undelivered.setdefault(
                study_uid, f"not settled after {self.settle_timeout_s:.0f} s: {why}"
            )

    def _check_kept(
        self,
        gw: Gateway,
        spool: Path,
        batch: Sequence[Study],
        acked: set[str],
        result: TrialResult,
        before_restart: bool,
    ) -> None:
        """(a) every acknowledged instance in the spool, intact, and in the database."""
        known = gw.store().known_instances()
        when = "before the restart" if before_restart else "after the restart"
        for study in batch:
            for uid in sorted(acked & study.sop_uids):
                path = spool / study.study_uid / study.series_uid / f"{uid}.dcm"
                problem = _spool_problem(path, study.source(uid))
                if problem is None and uid not in known:
                    problem = "no database row"
                if problem is None:
                    continue
                if before_restart and problem == "no database row":
                    result.notes.append(f"{uid}: acknowledged, no database row {when}")
                    continue
                if uid not in result.lost:
                    result.lost.append(uid)
                    result.notes.append(f"{uid} ({study.folder.name}): {problem} {when}")

    def _check_delivered(
        self, gw: Gateway, node: ReceivingNode, batch: Sequence[Study], result: TrialResult
    ) -> None:
        """(b) the latest job done and delivered; (c) one RTSTRUCT UID per study at the node."""
        st = gw.store()
        at_node: dict[str, set[str]] = {}
        for f in node.files():
            ds = dcmread(f, stop_before_pixels=True)
            if ds.Modality == "RTSTRUCT":
                at_node.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
        receipts = Counter(getattr(node, "receipts", []))
        repeats = {uid: n for uid, n in receipts.items() if n > 1}
        if repeats:
            result.notes.append(f"RTSTRUCT received more than once (replaced): {repeats}")
        for study in batch:
            uids = at_node.get(study.study_uid, set())
            if len(uids) > 1:
                result.duplicated[study.study_uid] = sorted(uids)
            jobs = st.jobs_for(study.study_uid, RULE)
            if not jobs:
                result.undelivered.setdefault(study.study_uid, "no job")
                continue
            for job in jobs[:-1]:
                if job.state != JobState.DONE.value:
                    result.notes.append(
                        f"{study.folder.name}: earlier job {job.id} {job.state}: {job.reason}"
                    )
            if len(jobs) > 1:
                result.notes.append(f"{study.folder.name}: {len(jobs)} jobs")
            job = jobs[-1]
            states = [d.state for d in st.deliveries_for(job.id)]
            if (
                job.state != JobState.DONE.value
                or not states
                or set(states) != {DeliveryState.DELIVERED.value}
            ):
                result.undelivered.setdefault(
                    study.study_uid,
                    f"job {job.id} {job.state} ({job.reason}); deliveries {states}",
                )
            elif not uids:
                result.undelivered.setdefault(
                    study.study_uid, f"job {job.id} done, no RTSTRUCT at the destination"
                )
            elif job.rtstruct_uid not in uids:
                result.duplicated.setdefault(study.study_uid, sorted(uids | {job.rtstruct_uid}))
                result.notes.append(f"job {job.id} made {job.rtstruct_uid}, node holds {uids}")


def _unsettled(st: Store, study: Study, quiet: float) -> str:
    """Why the study's work is not finished yet ('' when it is)."""
    times = st.study_times(study.study_uid)
    if times is None:
        return "no instance recorded"
    if time.time() < times.last_received_at + quiet + 2.0:
        return "within the quiet time"
    jobs = st.jobs_for(study.study_uid, RULE)
    if not jobs:
        return "no job"
    open_jobs = [
        f"job {j.id} {j.state}" for j in jobs if j.state not in {t.value for t in TERMINAL}
    ]
    if open_jobs:
        return ", ".join(open_jobs)
    last = jobs[-1]
    decided = last.stages.get("ready", last.stages.get("failed", last.created_at))
    if decided < times.last_received_at:
        return f"instances received after job {last.id} was decided, and no newer job"
    return ""


def _check_receive_point(fault: Fault, acked: int, result: TrialResult) -> None:
    """With one sender, a receive crash point fires at a known instance: before its response
    (the sender saw n - 1 acknowledged) or after it (the sender saw n; the kernel still sends a
    response written to the socket before the process died)."""
    want = fault.n - 1 if fault.where == "receive.before_ack" else fault.n
    if acked != want:
        result.misplaced.append(
            f"{fault}: the sender saw {acked} acknowledged instance(s), expected {want}"
        )


def _spool_problem(path: Path, source: Path) -> str | None:
    if not path.is_file():
        return "not in the spool"
    try:
        kept = dcmread(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a lost instance
        return f"unreadable in the spool ({type(exc).__name__})"
    sent = dcmread(source)
    if kept.SOPInstanceUID != sent.SOPInstanceUID or kept.PixelData != sent.PixelData:
        return "spool file differs from what was sent"
    return None


def _start(gw: Gateway) -> bool:
    """Start the gateway; False when it was SIGKILLed before it answered C-ECHO."""
    try:
        gw.start()
    except GatewayNotStarted as exc:
        if exc.returncode == -signal.SIGKILL:
            return False
        raise
    return True


def _log_size(gw: Gateway) -> int:
    return len(gw.log())


def _crash_logged(gw: Gateway, fault: Fault, since: int) -> bool:
    """Whether the gateway logged reaching the crash point after ``since`` (a log offset)."""
    return f"crash point {fault.where} reached: SIGKILL" in gw.log()[since:]


def _arm(config_path: Path, fault: Fault | None) -> None:
    """Set the config's crash point to ``fault`` (when it is one), else drop it."""
    raw = yaml.safe_load(config_path.read_text())
    raw.pop("faults", None)
    if fault is not None and fault.is_crash_point:
        raw["faults"] = {"crash_at": {fault.where: fault.n}}
    config_path.write_text(yaml.safe_dump(raw))


def _scan_log(gw: Gateway, result: TrialResult) -> None:
    """Tracebacks and errors in the gateway log are worth a note (not a verdict)."""
    for line in gw.log().splitlines():
        if "Traceback" in line or " ERROR " in line or "internal error" in line:
            result.notes.append(f"log: {line.strip()[:300]}")
