"""Telling people: every ``alerts.check_interval_s`` the conditions of
:mod:`gateway.monitor.conditions` are evaluated against the database and the disk, and the
``alerts`` table carries each occurrence through its lifecycle:

- a condition that starts opens an alert row (key ``<subject>#<n>``, the n-th occurrence of,
  e.g., ``destination_down:planning``), which is sent to every sink once;
- while it lasts and is not acknowledged it is re-sent every ``alerts.resend_minutes``
  (acknowledging stops the re-sends, not the "resolved" message);
- when the condition ends the row is resolved and a "resolved" message is sent once, if the
  alert itself was ever sent.

QA drift alarms (kind ``drift``) are rows the QA loop writes (:mod:`gateway.qa.alarms`); their
condition is the row itself. They are sent when they appear and re-sent while open (not
acknowledged); the checker never resolves them, because a control chart does not withdraw an
alarm: a person acknowledges it (no more re-sends), and if someone marks it resolved a
"resolved" message follows once.

Several processes may run the checker on one database: opening is idempotent (unique key) and
every send is claimed first by a conditional UPDATE, so one process sends it. A send no sink
took is given back and tried again at the next check; sinks that failed while another took it
are retried by this process at the next check. A process that dies between its claim and the
send loses that one send (the re-send follows after the interval). Every send is audited
(event ``alert``).

Sinks are Apprise URLs (``mailto://``, ``json://``, ``msteams://``, ...)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.db.database import Store
from gateway.db.records import JobState
from gateway.db.tables import AlertRow
from gateway.monitor import conditions as cond
from gateway.monitor.conditions import Condition, Facts, Kind, Severity
from gateway.receive.spool import Spool

log = logging.getLogger(__name__)

FIRING = "[AIRCON FIRING]"
RESOLVED = "[AIRCON RESOLVED]"


class Notifier:
    """The sinks, through Apprise, each sent to on its own so that the result of each is known
    (Apprise's notify() says only whether all of them took it). A sink's plugin is made anew
    for every message: a kept one throttles (e-mail: 5.5 s between messages), which would hold
    a check that has many alerts to send for minutes."""

    def __init__(self, urls: Sequence[str]):
        import apprise

        self._apprise = apprise
        self.sinks = tuple(urls)  # each one understood by Apprise (checked with the config)

    def send(self, title: str, body: str, kind: str, only: set[int] | None = None) -> set[int]:
        """Send to every sink (or those in ``only``); return the indices of those that failed."""
        notify_type = {
            "resolved": self._apprise.NotifyType.SUCCESS,
            Severity.CRITICAL.value: self._apprise.NotifyType.FAILURE,
        }.get(kind, self._apprise.NotifyType.WARNING)
        failed = set()
        for i, url in enumerate(self.sinks):
            if only is not None and i not in only:
                continue
            try:
                a = self._apprise.Apprise()
                ok = a.add(url) and bool(
                    a.notify(
                        title=title,
                        body=body,
                        notify_type=notify_type,
                        body_format=self._apprise.NotifyFormat.TEXT,
                    )
                )
            except Exception:
                log.exception("alert sink %d (%s) raised", i, _scheme(url))
                ok = False
            if not ok:
                log.warning("alert sink %d (%s) did not take %r", i, _scheme(url), title)
                failed.add(i)
        return failed


@dataclass
class _Retry:
    title: str
    body: str
    kind: str
    sinks: set[int]


class AlertMonitor:
    """Evaluates the conditions and sends the alerts; ``run(stop)`` is the checker's loop."""

    def __init__(
        self,
        cfg: GatewayConfig,
        store: Store,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.cfg = cfg
        self.store = store
        self.notifier = notifier if notifier is not None else Notifier(cfg.alerts.sinks)
        self.clock = clock
        self._retries: dict[tuple[int, str], _Retry] = {}

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.cfg.alerts.check_interval_s):
            try:
                self.check()
            except Exception:  # check again next time; never take the gateway down
                log.exception("alert check failed")

    def check(self) -> list[Condition]:
        """One pass: read the facts, open and resolve alerts, send what is due. Returns the
        conditions that hold."""
        now = self.clock()
        active = cond.evaluate(self.facts(now), self.cfg.alerts.conditions)
        self._reconcile(active, now)
        self._notify(active, now)
        return active

    # -- facts ----------------------------------------------------------------------------------

    def facts(self, now: float) -> Facts:
        c = self.cfg.alerts.conditions
        store = self.store
        status = store.destination_status() if c.destination_down_minutes is not None else {}
        destinations = tuple(
            cond.DestinationFact(name, row.down_since, row.last_error, bool(row.paused))
            for name, row in status.items()
            if name in self.cfg.destinations
        )
        jobs = tuple(
            cond.JobFact(j.id, j.study_uid, j.rule, j.reason)
            for j in (store.jobs_in(JobState.FAILED) if c.job_failed else [])
        )
        parked = tuple(
            cond.DeliveryFact(d.id, d.job_id, d.destination, uid, d.attempts, d.last_status)
            for d, uid in (store.parked_deliveries() if c.delivery_parked else [])
        )
        models = {
            name.removeprefix("model:"): row.detail
            for name, row in store.components().items()
            if name.startswith("model:") and row.state == "failed"
        }
        drift = tuple(
            cond.DriftFact(a.key, a.message, a.severity, a.model, a.model_version, a.roi, a.at)
            for a in store.alerts(state="open")
            if a.kind == Kind.DRIFT.value
        )
        incidents = tuple(
            cond.IncidentFact(
                i.id, i.title, i.job_id, i.study_uid, i.model, i.model_version, i.roi, i.opened_at
            )
            for i in store.incidents(state="candidate")
        )
        return Facts(
            now=now,
            destinations=destinations,
            failed_jobs=jobs,
            parked_deliveries=parked,
            free_mb=_free_mb(self.cfg) if c.disk_guard else None,
            min_free_mb=self.cfg.storage.min_free_mb,
            queued_jobs=store.count_jobs(JobState.QUEUED) if c.queue_backlog else 0,
            failed_models=models,
            drift=drift,
            incident_candidates=incidents,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def _reconcile(self, active: list[Condition], now: float) -> None:
        enabled = {k.value for k in cond.enabled_kinds(self.cfg.alerts.conditions)}
        by_subject = {c.key: c for c in active if c.kind is not Kind.DRIFT}
        open_subjects = set()
        for row in self.store.unresolved_alerts():
            # Drift rows are the QA loop's; a switched-off kind's rows are left as they are.
            if row.kind == Kind.DRIFT.value or row.kind not in enabled:
                continue
            subject = _subject(row.key)
            open_subjects.add(subject)
            if subject not in by_subject and self.store.resolve_alert(row.id, now):
                log.info("alert %d resolved: %s", row.id, row.key)
        for subject, c in by_subject.items():
            if subject in open_subjects:
                continue
            opened = self.store.open_alert(
                subject,
                now,
                kind=c.kind.value,
                severity=c.severity.value,
                message=c.message,
                job_id=c.job_id,
                destination=c.destination,
                model=c.model,
                model_version=c.model_version,
                roi=c.roi,
            )
            if opened is not None:
                log.warning("alert %d opened: %s", opened.id, c.summary)

    def _notify(self, active: list[Condition], now: float) -> None:
        self._retry_failed_sinks(now)
        if not self.notifier.sinks:
            return
        enabled = {k.value for k in cond.enabled_kinds(self.cfg.alerts.conditions)}
        current = {c.key: c for c in active}
        resend_s = self.cfg.alerts.resend_minutes * 60.0
        for row in self.store.alerts_to_notify(now, resend_s):
            if row.kind not in enabled:
                continue
            if row.state == "resolved":
                if self.store.claim_resolved_send(row.id):
                    title = f"{RESOLVED} {_first_line(row.message)}"
                    body = self._body(row, None, now, resolved=True)
                    if not self._deliver(row, "resolved", title, body, "resolved", now):
                        self.store.claim_resolved_send(row.id, undo=True)
                continue
            c = current.get(row.key if row.kind == Kind.DRIFT.value else _subject(row.key))
            # The message follows the condition (e.g. a newer reason); a drift row's is the
            # QA loop's own and stays.
            drift = row.kind == Kind.DRIFT.value
            message = c.message if c is not None and not drift else None
            seen = row.notified_at
            if not self.store.claim_alert_send(row.id, seen, now, message):
                continue  # another process sends it
            title = f"{FIRING} {_firing_title(c, row, now)}"
            body = self._body(row, c, now, resolved=False)
            stage = f"sent {row.notified_count + 1}"
            if not self._deliver(row, stage, title, body, row.severity, now):
                self.store.release_alert_send(row.id, seen, now)

    def _deliver(
        self, row: AlertRow, stage: str, title: str, body: str, kind: str, now: float
    ) -> bool:
        """Send to the sinks; False when none took it. Sinks that failed while others took
        it are kept to retry at the next check."""
        failed = self.notifier.send(title, body, kind)
        if len(failed) == len(self.notifier.sinks):
            log.warning("alert %d: no sink took it; trying again at the next check", row.id)
            return False
        for key in [k for k in self._retries if k[0] == row.id]:
            del self._retries[key]  # a later message of the same alert supersedes it
        if failed:
            self._retries[(row.id, stage)] = _Retry(title, body, kind, failed)
        outcome = (
            "resolved sent" if stage == "resolved" else ("sent" if stage == "sent 1" else "resent")
        )
        self.store.audit(
            "alert",
            outcome,
            now,
            job_id=row.job_id,
            destination=row.destination,
            model=f"{row.model} {row.model_version}".strip(),
            detail=f"alert {row.id} {row.key} to {len(self.notifier.sinks) - len(failed)} of "
            f"{len(self.notifier.sinks)} sink(s): {title}",
        )
        return True

    def _retry_failed_sinks(self, now: float) -> None:
        for key, retry in list(self._retries.items()):
            retry.sinks = self.notifier.send(retry.title, retry.body, retry.kind, only=retry.sinks)
            if not retry.sinks:
                del self._retries[key]
                self.store.audit(
                    "alert", "sink retried", now, detail=f"alert {key[0]}: {retry.title}"
                )

    def _body(self, row: AlertRow, c: Condition | None, now: float, resolved: bool) -> str:
        lines = [row.message if c is None else c.message, ""]
        if resolved:
            lines.append(f"resolved at {cond.iso(row.resolved_at or now)}")
        lines += [
            f"kind: {row.kind}, severity: {row.severity}",
            f"opened: {cond.iso(row.at)}",
            f"alert {row.id} ({row.key})"
            + ("" if resolved else f", notification {row.notified_count + 1}"),
            f"gateway: {self.cfg.ae_title} on {socket.gethostname()}",
        ]
        if not resolved:
            lines.append("acknowledge it in the console to stop the reminders")
        return "\n".join(lines)


def _subject(key: str) -> str:
    return key.rpartition("#")[0] or key


def _first_line(message: str) -> str:
    return message.splitlines()[0] if message else ""


def _firing_title(c: Condition | None, row: AlertRow, now: float) -> str:
    summary = c.summary if c is not None else _first_line(row.message)
    if c is not None and c.since is not None and c.kind is not Kind.DRIFT:
        return f"{summary} for {max(0, int((now - c.since) // 60))} min"
    return summary


def _free_mb(cfg: GatewayConfig) -> float | None:
    try:  # measured as the receiver's disk guard measures it
        return Spool(cfg.paths.spool).free_mb()
    except OSError as exc:
        log.warning("alerts: cannot measure the free space under the spool: %s", exc)
        return None


def _scheme(url: str) -> str:
    # Only the scheme is logged: a sink URL may carry a password or a webhook token.
    return url.partition("://")[0] or "?"
