"""``/metrics`` in the Prometheus text format, read from the database at every scrape.

The database is the truth: the counters are counts of append-only audit rows and the
histograms are built from the jobs' recorded stage times, so every process sharing the database
reports the same numbers and a restart resets nothing. A scrape reads in one transaction (one
consistent snapshot), aggregates in SQL, and reads only what changed since the previous scrape
(:mod:`.tallies`). Labels are rule, model, version, ROI, destination, stage, state, kind and
outcome names, never UIDs or patient data.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import and_, func, literal, select
from sqlalchemy.orm import Session

from gateway.config import GatewayConfig
from gateway.db.database import Store
from gateway.db.records import TERMINAL, JobState
from gateway.db.tables import AlertRow, DeliveryRow, JobRow, QaRow
from gateway.monitor.health import Live, spool_free_bytes
from gateway.monitor.tallies import BUCKETS, AuditTotals, StageTimes

QA_CASES = 20  # the surface Dice gauge is the mean of this many latest compared cases
OPEN_JOB_STATES = [s.value for s in JobState if s not in TERMINAL]
DELIVERY_STATES = ("pending", "sending", "failed")


def render_metrics(cfg: GatewayConfig, store: Store, live: Live) -> tuple[bytes, str]:
    """The exposition (body, content type) of one scrape, everything read afresh. A server
    keeps one :class:`MetricsExporter` instead, whose scrapes read only what changed."""
    return MetricsExporter(cfg, store, live).render()


class MetricsExporter:
    """``/metrics`` of one process: its registry and the running totals it brings up to date
    at each scrape (:mod:`.tallies`). Safe to call from several threads."""

    def __init__(
        self, cfg: GatewayConfig, store: Store, live: Live, clock: Callable[[], float] = time.time
    ) -> None:
        self.cfg, self.store, self.live, self.clock = cfg, store, live, clock
        self.audit = AuditTotals()
        self.stages = StageTimes(sorted(cfg.models))
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def render(self) -> tuple[bytes, str]:
        with self._lock:
            # Every name is a classic one: the body is the 0.0.4 text format any Prometheus reads.
            return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


class _Collector(Collector):
    def __init__(self, exporter: MetricsExporter) -> None:
        self.x = exporter

    def collect(self) -> Iterator[Metric]:
        x = self.x
        with x.store.session() as s:  # one read transaction: one consistent snapshot
            totals, ended = x.audit.read(s, x.clock())
            unfinished = dict(
                s.execute(select(JobRow.id, JobRow.state).where(JobRow.state.in_(OPEN_JOB_STATES)))
                .tuples()
                .all()
            )
            x.stages.refresh(s, set(unfinished), ended)
            yield from _counters(totals)
            yield _stage_histogram(x.stages)
            yield _queue_depth(unfinished)
            yield _deliveries_open(s, sorted(x.cfg.destinations))
            yield from _qa(s)
            yield _alerts(s)
        yield from _process_side(x.cfg, x.store, x.live)


def _counters(totals: Counter[tuple[str, ...]]) -> Iterator[Metric]:
    received = CounterMetricFamily(
        "aircon_instances_received",
        "DICOM instances received by the Storage SCP, by status (stored: durable and "
        "acknowledged; refused: answered with a failure status), counted from the audit rows "
        "written when each association ends",
        labels=["status"],
    )
    assoc = CounterMetricFamily(
        "aircon_associations",
        "Associations to the Storage SCP, by outcome (released or aborted after sending "
        "instances; no instances; rejected: peer not allowed or TLS handshake failed), counted "
        "from the audit",
        labels=["outcome"],
    )
    jobs = CounterMetricFamily(
        "aircon_jobs",
        "Jobs that ended, by rule and outcome (done: every delivery delivered; failed), "
        "counted from the audit: a job resent that ends again counts again",
        labels=["rule", "outcome"],
    )
    deliveries = CounterMetricFamily(
        "aircon_deliveries",
        "Delivery attempts by destination and outcome (delivered; retry: an attempt failed "
        "and is tried again later; parked: attempts exhausted; rejected: refused "
        "permanently), counted from the audit",
        labels=["destination", "outcome"],
    )
    family = {
        "received": received,
        "association": assoc,
        "job": jobs,
        "delivery": deliveries,
    }
    for (event, *labels), n in sorted(totals.items()):
        family[event].add_metric(labels, float(n))
    yield from (received, assoc, jobs, deliveries)


def _stage_histogram(times: StageTimes) -> Metric:
    hist = HistogramMetricFamily(
        "aircon_stage_duration_seconds",
        "Seconds per stage of the jobs that ended (done or failed), from their recorded stage "
        "times; a job run again counts with its last run. Whole-job stages (model empty): "
        "receive, assemble, queue, rtstruct, send, total (last instance received to "
        "delivered). Per model, of its runs that succeeded: volume (reading its inputs), wait "
        "(for another job using the model), segment (the model running)",
        labels=["stage", "model"],
    )
    for c, (stage, model) in enumerate(times.columns):
        if not times.counts[c]:
            continue
        cumulative = list(itertools.accumulate(times.buckets[c]))
        buckets = [
            (floatToGoString(le), float(n)) for le, n in zip(BUCKETS, cumulative[:-1], strict=True)
        ]
        buckets.append(("+Inf", float(times.counts[c])))
        hist.add_metric([stage, model], buckets, times.sums[c])
    return hist


def _queue_depth(unfinished: dict[int, str]) -> Metric:
    depth = GaugeMetricFamily(
        "aircon_queue_depth",
        "Jobs not finished, by state (waiting: for complete inputs; queued: for a worker; "
        "running: a model or the RTSTRUCT build; delivering: deliveries open)",
        labels=["state"],
    )
    counts = Counter(unfinished.values())
    for state in OPEN_JOB_STATES:
        depth.add_metric([state], float(counts[state]))
    return depth


def _deliveries_open(s: Session, destinations: list[str]) -> Metric:
    gauge = GaugeMetricFamily(
        "aircon_deliveries_open",
        "Deliveries now in a state that needs the destination or an operator, by destination "
        "and state (pending: waiting to be sent or for a retry; sending; failed: parked or "
        "rejected, until resent)",
        labels=["destination", "state"],
    )
    rows = s.execute(
        select(DeliveryRow.destination, DeliveryRow.state, func.count())
        .where(DeliveryRow.state.in_(DELIVERY_STATES))
        .group_by(DeliveryRow.destination, DeliveryRow.state)
    ).all()
    found = {(d, st): n for d, st, n in rows}
    for dest in sorted(set(destinations) | {d for d, _ in found}):
        for state in DELIVERY_STATES:
            gauge.add_metric([dest, state], float(found.get((dest, state), 0)))
    return gauge


def _qa(s: Session) -> Iterator[Metric]:
    latest = (
        select(
            QaRow.model,
            QaRow.model_version,
            QaRow.roi,
            QaRow.surface_dice,
            func.row_number()
            .over(
                partition_by=(QaRow.model, QaRow.model_version, QaRow.roi),
                order_by=(QaRow.at.desc(), QaRow.id.desc()),
            )
            .label("n"),
        )
        .where(
            and_(
                QaRow.status == "compared",
                QaRow.superseded.is_(False),
                QaRow.surface_dice.is_not(None),
            )
        )
        .subquery()
    )
    keys = (latest.c.model, latest.c.model_version, latest.c.roi)
    rows = s.execute(
        select(*keys, func.avg(latest.c.surface_dice), func.count())
        .where(latest.c.n <= literal(QA_CASES))
        .group_by(*keys)
        .order_by(*keys)
    ).all()
    dice = GaugeMetricFamily(
        "aircon_qa_surface_dice",
        f"Mean surface Dice (at the ROI's tolerance) of the last {QA_CASES} cases of the model "
        "version and ROI compared with the clinician-approved structure set (superseded "
        "answers left out)",
        labels=["model", "version", "roi"],
    )
    cases = GaugeMetricFamily(
        "aircon_qa_surface_dice_cases",
        f"How many compared cases aircon_qa_surface_dice averages (at most {QA_CASES})",
        labels=["model", "version", "roi"],
    )
    for model, version, roi, mean, n in rows:
        dice.add_metric([model, version, roi], float(mean))
        cases.add_metric([model, version, roi], float(n))
    yield from (dice, cases)


def _alerts(s: Session) -> Metric:
    alerts = GaugeMetricFamily(
        "aircon_alerts_open",
        "Alerts raised and neither acknowledged nor resolved, by kind",
        labels=["kind"],
    )
    query = select(AlertRow.kind, func.count()).where(AlertRow.state == "open")
    for kind, n in s.execute(query.group_by(AlertRow.kind).order_by(AlertRow.kind)):
        alerts.add_metric([kind], float(n))
    return alerts


def _process_side(cfg: GatewayConfig, store: Store, live: Live) -> Iterator[Metric]:
    dests = store.destination_status()
    up = GaugeMetricFamily(
        "aircon_destination_up",
        "1 if the destination answered its last scheduled C-ECHO, 0 if not; absent until it "
        "was first echoed (every monitor.echo_interval_s)",
        labels=["destination"],
    )
    rtt = GaugeMetricFamily(
        "aircon_destination_echo_rtt_seconds",
        "Round-trip time of the destination's last C-ECHO, when it answered (association included)",
        labels=["destination"],
    )
    paused = GaugeMetricFamily(
        "aircon_destination_paused",
        "1 if an operator paused deliveries to the destination, else 0",
        labels=["destination"],
    )
    for name in sorted(cfg.destinations):
        row = dests.get(name)
        paused.add_metric([name], 1.0 if row is not None and row.paused else 0.0)
        if row is None or row.up is None:
            continue
        up.add_metric([name], 1.0 if row.up else 0.0)
        if row.up and row.rtt_ms is not None:
            rtt.add_metric([name], row.rtt_ms / 1000.0)
    yield from (up, rtt, paused)

    components = store.components()
    warm = GaugeMetricFamily(
        "aircon_model_warm",
        "1 if a gateway process has the model loaded and warmed (its components row "
        "model:<name> is ok), else 0 (loading, failed or never loaded)",
        labels=["model"],
    )
    for name in sorted(cfg.models):
        component = components.get(f"model:{name}")
        ok = component is not None and component.state == "ok"
        warm.add_metric([name], 1.0 if ok else 0.0)
    yield warm
    yield GaugeMetricFamily(
        "aircon_scp_listening",
        "1 if the Storage SCP of the process answering this scrape is listening, else 0",
        value=1.0 if live.scp_listening() else 0.0,
    )
    yield GaugeMetricFamily(
        "aircon_spool_free_bytes",
        "Free bytes on the file system that holds paths.spool",
        value=spool_free_bytes(cfg),
    )
    yield GaugeMetricFamily(
        "aircon_spool_min_free_bytes",
        "The disk guard storage.min_free_mb in bytes: below it, new instances are refused "
        "with 0xA700",
        value=cfg.storage.min_free_mb * 1024**2,
    )
