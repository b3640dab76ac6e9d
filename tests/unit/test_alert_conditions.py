"""Which alert conditions hold: thresholds, paused destinations, switched-off kinds, one alert
for a job failed by a parked delivery."""

from __future__ import annotations

from gateway.config import AlertConditions
from gateway.monitor.conditions import (
    DeliveryFact,
    DestinationFact,
    Facts,
    JobFact,
    Kind,
    evaluate,
)

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
