"""The CLI's read and repair commands on a temporary gateway folder (no gateway running)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.config import load_config
from gateway.db.database import Store
from gateway.db.records import InstanceRecord, JobState
from gateway.queue import make_queues


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": "sqlite:///aircon.db"}}))
    return path


def receive(store: Store, study_uid: str, at: float) -> None:
    rec = InstanceRecord(
        study_uid=study_uid,
        series_uid=f"{study_uid}.1",
        sop_instance_uid=f"{study_uid}.1.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        path=f"/spool/{study_uid}.dcm",
        series_attributes={"Modality": "MR"},
        geometry={},
    )
    store.record_instance(rec, "SCANNER", "AIRCON", now=at)


def test_studies_limit_shows_the_most_recent_arrivals(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(load_config(config).database.url)
    for i, at in enumerate((1000.0, 4000.0, 2000.0, 3000.0)):
        receive(store, f"1.2.3.{i}", at)

    assert main(["-c", str(config), "studies", "--limit", "2"]) == 0
    shown = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]]
    assert shown == ["1.2.3.3", "1.2.3.1"]  # arrived at 3000 and 4000, oldest first

    assert main(["-c", str(config), "studies"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 4


def test_studies_limit_must_be_positive(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["-c", str(config), "studies", "--limit", "0"])
    assert info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_resend_queues_the_job_without_building_a_gateway(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(config)
    store = Store(cfg.database.url)
    job = store.create_job("1.2.3", "mr", "pelvis", now=1000.0)
    store.update_job(job.id, state=JobState.FAILED, reason="model failed", input_series=["1.2.3.1"])

    assert main(["-c", str(config), "resend", str(job.id)]) == 0
    assert f"job {job.id}: queued to run again" in capsys.readouterr().out
    again = store.job(job.id)
    assert again is not None and again.state == JobState.QUEUED.value
    assert make_queues(cfg).models.pending_count() == 1  # for the running gateway's workers
    assert not cfg.paths.spool.exists() and not cfg.paths.output.exists()

    assert main(["-c", str(config), "resend", "999"]) == 1
    assert "no job 999" in capsys.readouterr().err


def test_studies_show_why_a_study_was_not_processed(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    row = {"study_uid": "1.2.3", "series": 1, "instances": 2, "last_received_at": 0.0}
    why = "rule prostate-mr: Modality '^MR$' not matched by any series (series 2: 'CT')"
    monkeypatch.setattr(Store, "list_studies", lambda self, **kw: [row, {**row, "reason": why}])
    assert main(["-c", str(config), "studies"]) == 0
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split()[-1] == "reason"
    assert second.endswith(f"  {why}") and not first.endswith("'CT')")
