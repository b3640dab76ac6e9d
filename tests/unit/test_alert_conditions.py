"""Which alert conditions hold: thresholds, paused destinations, switched-off kinds, one alert
for a job failed by a parked delivery."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.monitor.conditions import (
    DeliveryFact,
    DestinationFact,
    Facts,
    JobFact,
    Kind,
    evaluate,
)
from gateway.ops_policy import AlertConditions

NOW = 1_800_000_000.0


def keys(facts: Facts, **cfg: object) -> list[str]:
    return [c.key for c in evaluate(facts, AlertConditions.model_validate(cfg))]


def test_a_destination_is_down_after_the_configured_minutes_unless_paused() -> None:
    down = DestinationFact("planning", NOW - 4 * 60, "connection refused")
    assert keys(Facts(NOW, destinations=(down,))) == []
    long_down = DestinationFact("planning", NOW - 6 * 60, "connection refused")
    assert keys(Facts(NOW, destinations=(long_down,))) == ["destination_down:planning"]
    paused = DestinationFact("planning", NOW - 60 * 60, "connection refused", paused=True)
    assert keys(Facts(NOW, destinations=(paused,))) == []
    assert keys(Facts(NOW, destinations=(long_down,)), destination_down_minutes=None) == []


def test_a_job_failed_by_a_parked_delivery_is_told_once_by_the_delivery() -> None:
    facts = Facts(
        NOW,
        failed_jobs=(
            JobFact(7, "1.2.3", "prostate-mr", "delivery parked"),
            JobFact(8, "1.2.4", "r", "x"),
        ),
        parked_deliveries=(DeliveryFact(3, 7, "planning", "1.2.3", 8, "0xA700"),),
    )
    assert keys(facts) == ["job_failed:8", "delivery_parked:3"]
    assert keys(facts, delivery_parked=False) == ["job_failed:7", "job_failed:8"]


def test_disk_guard_and_backlog_thresholds() -> None:
    assert keys(Facts(NOW, free_mb=100.0, min_free_mb=2048.0)) == ["disk_guard:spool"]
    assert keys(Facts(NOW, free_mb=4096.0, min_free_mb=2048.0)) == []
    assert keys(Facts(NOW, queued_jobs=50)) == []  # at the limit: not above it
    (backlog,) = evaluate(Facts(NOW, queued_jobs=51), AlertConditions())
    assert backlog.kind is Kind.QUEUE_BACKLOG and "51 jobs" in backlog.summary


def test_check_config_refuses_a_sink_url_apprise_does_not_understand(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    good = "mailto://127.0.0.1:2525?from=aircon@example.org&to=oncall@example.org"
    cfg = parse_config({"alerts": {"sinks": [good, "json://127.0.0.1:8000/hook"]}}, tmp_path)
    assert cfg.alerts.sinks[0] == good
    with pytest.raises(ConfigError) as err:
        parse_config({"alerts": {"sinks": [good, "smtp-please://secret@relay"]}}, tmp_path)
    ((where, why),) = err.value.problems
    assert where == "alerts.sinks" and "sink(s) [1]" in why
    assert "secret" not in str(err.value.problems)  # a sink URL may hold a password
