"""The scale-out roles' rules that need no servers: a worker never migrates, a GPU is named by
index, and a step still to do is handed to the queue again with a growing interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.cli import build_parser
from gateway.db.database import Store
from gateway.db.records import JobState
from gateway.errors import ModelError, SchemaNotReady
from gateway.job import JobPlan
from gateway.scheduler import HAND_AGAIN_MAX_S, Scheduler
from gateway.segment.base import resolve_device
from gateway.segment.spec import SegmentationConfig


def test_a_worker_waits_for_the_receiver_to_migrate_and_never_migrates_itself(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'aircon.db'}"
    with pytest.raises(SchemaNotReady, match=r"schema is empty, this release needs \w+"):
        Store(url, migrate_wait_s=0.3)
    with pytest.raises(SchemaNotReady):  # still nothing: the worker made no table
        Store(url, migrate_wait_s=0.0)
    Store(url)  # the receiver migrates
    assert Store(url, migrate_wait_s=0.0).job(1) is None


def test_a_gpu_is_named_by_index_and_checked_against_what_the_process_sees() -> None:
    parser = build_parser()
    assert parser.parse_args(["worker", "--device", "cuda:1"]).device == "cuda:1"
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--device", "gpu1"])
    assert parser.parse_args(["serve", "--role", "receiver"]).role == "receiver"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--role", "worker"])  # that is `aircon worker`
    assert SegmentationConfig(device="cuda:0").device == "cuda:0"
    with pytest.raises(ValueError):
        SegmentationConfig(device="cuda:x")
    assert resolve_device(SegmentationConfig(device="cpu")) == "cpu"
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        gpus = 0
    with pytest.raises(ModelError, match="cuda:7"):
        resolve_device(SegmentationConfig(device=f"cuda:{max(gpus, 7)}"))


class Recorder:
    def __init__(self) -> None:
        self.jobs: list[int] = []

    def run_job(self, job_id: int) -> None:
        self.jobs.append(job_id)

    def deliver(self, delivery_id: int, delay: float = 0.0) -> None:
        pass

    def compare(self, structure_set_uid: str) -> None:
        pass


def test_a_queued_job_is_handed_again_at_doubling_intervals(tmp_path: Path) -> None:
    """Defect guarded: every scheduler re-queued every queued job every 2 s while a worker was
    busy with a long inference, filling the queue with duplicates."""
    store = Store(f"sqlite:///{tmp_path / 'aircon.db'}")
    job = store.create_job("1.2.3", "mr", ["m"], 0.0)
    assert store.mark_ready(job.id, JobPlan(models={}), {"ready": 0.0}, "queued")
    assert store.job(job.id).state == JobState.QUEUED.value  # type: ignore[union-attr]
    now = [1000.0]
    dispatch = Recorder()
    sched: Any = Scheduler(
        store,
        lambda uid: None,
        dispatch,
        "host:1:x",
        poll_s=0.25,
        lease_s=60,
        pickup_after_s=2.0,
        clock=lambda: now[0],
        checks=False,
    )
    handed_at = []
    for _ in range(int(400 / 0.25)):
        before = len(dispatch.jobs)
        sched.tick()
        if len(dispatch.jobs) > before:
            handed_at.append(now[0] - 1000.0)
        now[0] += 0.25
    gaps = [b - a for a, b in zip(handed_at, handed_at[1:], strict=False)]
    assert handed_at[0] == pytest.approx(2.0)
    assert gaps[:5] == pytest.approx([4.0, 8.0, 16.0, 32.0, 60.0], abs=0.26)
    assert max(gaps) <= HAND_AGAIN_MAX_S + 0.25
    assert len(handed_at) < 12  # not 200 (every 2 s over 400 s)
