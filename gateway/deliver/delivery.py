"""Delivery: C-STORE one job's RTSTRUCT to one destination, with backoff, in order per
destination, parked after ``delivery.max_attempts``.

A destination an operator paused gets nothing: its due deliveries stay pending, looked at
again every ``paused_recheck_s``, their attempts not counted (:meth:`Deliverer.release`, on
resume, makes them due at once).

Deliveries to a destination go in order of arrival (job id): one waits while an older one to
the same destination is unfinished, and each finished delivery hands on to the next. A
delivery is claimed in the database (PENDING -> SENDING under a lease) before it is sent, and
its end (delivered, parked, rejected) updates the delivery, settles the job and writes both
audit rows in one transaction. The network is behind a :class:`Sender`, injected.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from gateway.config import DeliveryConfig, DestinationConfig
from gateway.db.database import Store
from gateway.db.records import DeliveryState
from gateway.errors import GatewayError, PeerUnavailable, PermanentError, RetriableError
from gateway.failpoints import CrashPoints
from gateway.job import JobOutcome

log = logging.getLogger(__name__)


class Sender(Protocol):
    """Sends files to a destination over one association (``gateway.dicom.scu.store``).

    Raises :class:`RetriableError` (try later) or :class:`PermanentError` (rejected)."""

    def __call__(
        self,
        dest: DestinationConfig,
        calling_ae: str,
        files: Sequence[Path],
        *,
        timeout: float = 30.0,
        before_send: Callable[[], None] | None = None,
    ) -> object: ...


class Redispatch(Protocol):
    def deliver(self, delivery_id: int, delay: float = 0.0) -> None: ...


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with +-20% jitter: base, 2 base, 4 base, ... capped at ``cap``."""
    rng = rng or random.Random()
    return min(cap, base * 2 ** max(0, attempt - 1)) * rng.uniform(0.8, 1.2)


def _what(outcome: JobOutcome, outputs: tuple[str, ...]) -> str:
    """What a delivery sent, for the log: "RTSTRUCT", "RTSTRUCT + SEG + 24 image(s)"."""
    if not outcome.artifacts:
        return "RTSTRUCT"
    sent = [a.kind for a in outcome.artifacts if a.kind in {*outputs, "image"}]
    names = [k.upper() for k in ("rtstruct", "seg") if k in sent]
    images = sent.count("image")
    return " + ".join(names + ([f"{images} image(s)"] if images else []))


class Deliverer:
    def __init__(
        self,
        store: Store,
        destinations: dict[str, DestinationConfig],
        cfg: DeliveryConfig,
        ae_title: str,
        dispatch: Redispatch,
        sender: Sender,
        *,
        owner: str = "",
        lease_s: float = 3600.0,
        paused_recheck_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        crash: CrashPoints | None = None,
    ):
        self.store = store
        self.destinations = destinations
        self.cfg = cfg
        self.ae_title = ae_title
        self.dispatch = dispatch
        self.sender = sender
        self.owner = owner
        self.lease_s = lease_s
        self.paused_recheck_s = paused_recheck_s
        self.clock = clock
        self.crash = crash or CrashPoints()

    def deliver(self, delivery_id: int) -> None:
        """Send one RTSTRUCT to one destination, if it is due and first in line and its
        destination is not paused."""
        now = self.clock()
        if self.store.postpone_if_paused(delivery_id, now, now + self.paused_recheck_s):
            log.debug("delivery %d: destination paused; looked at again later", delivery_id)
            self.dispatch.deliver(delivery_id, delay=self.paused_recheck_s)
            return
        if not self.store.claim_delivery(delivery_id, now, self.owner, self.lease_s):
            return  # delivered, parked, being sent, not due, or waiting behind an older one
        d = self.store.delivery(delivery_id)
        assert d is not None
        job = self.store.job(d.job_id)
        assert job is not None and job.rtstruct_path
        attempt = d.attempts + 1
        dest = self.destinations.get(d.destination)
        if dest is None:
            why = f"destination '{d.destination}' not configured"
            self._finish(delivery_id, DeliveryState.FAILED, attempt, why, "rejected")
            return
        files = job.job_outcome.files_for(dest.outputs, job.rtstruct_path)
        if not files:
            why = f"nothing of outputs {list(dest.outputs)} was made for this job"
            self._finish(delivery_id, DeliveryState.FAILED, attempt, why, "rejected")
            return
        try:
            self._send(dest, [Path(f) for f in files])
        except RetriableError as exc:
            if attempt >= self.cfg.max_attempts:
                log.warning("job %d: delivery to %s parked: %s", d.job_id, d.destination, exc)
                status = f"parked after {attempt} attempts: {exc}"
                self._finish(delivery_id, DeliveryState.FAILED, attempt, status, "parked")
                return
            delay = backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s)
            self.store.retry_delivery(delivery_id, attempt, str(exc), self.clock() + delay)
            log.info(
                "job %d: delivery to %s attempt %d failed (%s); retry in %.1f s",
                d.job_id,
                d.destination,
                attempt,
                exc,
                delay,
            )
            self.dispatch.deliver(delivery_id, delay=delay)
            return
        except (PermanentError, OSError) as exc:
            log.warning("job %d: delivery to %s rejected: %s", d.job_id, d.destination, exc)
            self._finish(delivery_id, DeliveryState.FAILED, attempt, str(exc), "rejected")
            return
        log.info(
            "job %d: %s delivered to %s",
            d.job_id,
            _what(job.job_outcome, dest.outputs),
            d.destination,
        )
        self._finish(delivery_id, DeliveryState.DELIVERED, attempt, "0x0000", "delivered")

    def _send(self, dest: DestinationConfig, files: list[Path]) -> None:
        try:
            self.sender(
                dest,
                self.ae_title,
                files,
                timeout=self.cfg.timeout_s,
                before_send=lambda: self.crash.hit("deliver.before_send"),
            )
            self.crash.hit("deliver.after_accept")
        except (GatewayError, OSError):
            raise
        except Exception as exc:  # an unexpected network-library failure: try again later
            log.exception("delivery to %s: unexpected error", dest.ae_title)
            raise PeerUnavailable(f"unexpected {type(exc).__name__}") from exc

    def _finish(
        self, delivery_id: int, state: DeliveryState, attempts: int, status: str, outcome: str
    ) -> None:
        following = self.store.finish_delivery(
            delivery_id, state, attempts, status, outcome, self.clock()
        )
        if following is not None:
            d = self.store.delivery(following)
            due = d.next_attempt_at if d is not None else 0.0
            self.dispatch.deliver(following, delay=max(0.0, due - self.clock()))

    def release(self, destination: str) -> list[int]:
        """A destination was resumed: its pending deliveries are due now and handed to the
        queue (the oldest goes first; each hands on to the next)."""
        ids = self.store.deliveries_due_now(destination, self.clock())
        for i in ids:
            self.dispatch.deliver(i)
        return ids

    def requeue(self, job_id: int, now: float) -> list[int]:
        """Make a job's undelivered deliveries (or, if all were delivered, all of them) pending
        and due now; return their ids. One being sent right now (a live lease) is left to its
        sender: a second click never sends a structure set twice at once."""
        deliveries = [
            d
            for d in self.store.deliveries_for(job_id)
            if not (
                d.state == DeliveryState.SENDING.value
                and d.lease_owner
                and (d.lease_expires_at or 0.0) > now
            )
        ]
        ids = [d.id for d in deliveries if d.state != DeliveryState.DELIVERED.value]
        for i in ids or [d.id for d in deliveries]:
            self.store.update_delivery(
                i,
                state=DeliveryState.PENDING,
                attempts=0,
                next_attempt_at=0.0,
                lease_owner=None,
                lease_expires_at=None,
            )
        return ids or [d.id for d in deliveries]
