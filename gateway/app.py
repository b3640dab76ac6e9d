"""Wiring: one config -> store, spool, queue, pipeline, Storage SCP. Used by the CLI."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Literal

from gateway.config import GatewayConfig
from gateway.db.database import Store
from gateway.errors import GatewayError
from gateway.failpoints import CrashPoints
from gateway.monitor.alerts import AlertMonitor
from gateway.monitor.echo import EchoMonitor
from gateway.pipeline import Pipeline
from gateway.queue import HueyDispatcher, make_queues
from gateway.receive.receiver import Receiver
from gateway.receive.recovery import recover_returned, recover_spool
from gateway.receive.spool import Spool
from gateway.scheduler import Scheduler, new_owner

log = logging.getLogger(__name__)

Role = Literal["all", "receiver", "worker"]


# How long ``aircon worker`` waits at start for the receiver to migrate the database.
WORKER_SCHEMA_WAIT_S = 300.0


class Gateway:
    def __init__(self, cfg: GatewayConfig, role: Role = "all"):
        """``role``: see :meth:`serve`; a worker never migrates the database (the receiver or
        ``aircon serve`` does) but waits for it."""
        self.cfg = cfg
        self.role = role
        cfg.paths.spool.mkdir(parents=True, exist_ok=True)
        cfg.paths.output.mkdir(parents=True, exist_ok=True)
        if cfg.database.url.startswith("sqlite:///"):
            Path(cfg.database.url.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        wait = WORKER_SCHEMA_WAIT_S if role == "worker" else None
        self.store = Store(cfg.database.url, migrate_wait_s=wait)
        self.queues = make_queues(cfg)
        self.dispatcher = HueyDispatcher(self.queues)
        self.owner = new_owner()
        self.crash = CrashPoints(cfg.faults.crash_at)
        if cfg.faults.crash_at:
            log.warning("crash points armed (fault testing only): %s", dict(cfg.faults.crash_at))
        self._pipeline: Pipeline | None = None
        self._scp_obj: Any = None
        self._echo_monitor: EchoMonitor | None = None

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = Pipeline(
                self.cfg, self.store, self.dispatcher, crash=self.crash, owner=self.owner
            )
        return self._pipeline

    @property
    def echo_monitor(self) -> EchoMonitor:
        """The destinations' C-ECHO monitor (run by ``serve``; ``check(name)`` echoes now)."""
        if self._echo_monitor is None:
            self._echo_monitor = EchoMonitor(self.cfg, self.store, self.cfg.ae_title)
        return self._echo_monitor

    def serve(self, ready: threading.Event | None = None) -> None:
        """Run this process's part (its ``role``) until SIGINT/SIGTERM (blocks; main thread).

        ``all`` (``aircon serve``): everything in one process. ``receiver`` (``aircon serve
        --role receiver``): the Storage SCP, study checks, deliveries, QA, the console and the
        monitors; no models. ``worker`` (``aircon worker``): the models only, taking jobs from
        the shared queue and the database (with an embedded SQLite queue, which no other
        process reads, it also sends its own deliveries). SIGTERM stops gracefully: the steps
        running (an inference) finish first, their leases renewed meanwhile."""
        role = self.role
        listen = role != "worker"
        models = role != "receiver"
        work = role != "worker" or self.cfg.queue.backend == "sqlite"
        pipeline = self.pipeline
        self.dispatcher.bind(pipeline)
        if self.cfg.queue.backend == "sqlite":
            for queue in self.queues:  # the database is the truth: recover() re-dispatches
                queue.flush()
        scp = self._scp() if listen else None
        self._scp_obj = scp
        pipeline.recover(receiving=listen)
        if listen:
            from gateway.monitor import selftest

            selftest.recover(self.store)
        if scp is not None:
            scp.start()
            self.store.set_component("scp", "listening", time.time(), owner=self.owner)
        console = self._console() if listen and self.cfg.http.enabled else None
        if models:
            threading.Thread(target=self._warm_models, name="warm-models", daemon=True).start()
        stop = threading.Event()
        scheduler = Scheduler(
            self.store,
            pipeline.check_study,
            self.dispatcher,
            self.owner,
            poll_s=self.cfg.queue.poll_s,
            lease_s=self.cfg.queue.lease_s,
            checks=listen,
            work=work,
        )
        threading.Thread(target=scheduler.run, args=(stop,), name="scheduler", daemon=True).start()
        if listen:
            threading.Thread(
                target=self._purge_loop, args=(stop,), name="retention", daemon=True
            ).start()
            threading.Thread(
                target=self.echo_monitor.run, args=(stop,), name="echo-monitor", daemon=True
            ).start()
            alerts = AlertMonitor(self.cfg, self.store)
            threading.Thread(target=alerts.run, args=(stop,), name="alerts", daemon=True).start()
        consumers = []
        if models:
            consumers.append(self._consumer(self.queues.models, self.cfg.queue.model_workers))
        if work:
            consumers.append(self._consumer(self.queues.work, self.cfg.queue.workers))
        *others, main = consumers
        if scp is not None:
            log.info("gateway %s ready on %s:%d", self.cfg.ae_title, self.cfg.listen.host, scp.port)
        else:
            log.info("gateway worker %s ready (not listening)", self.owner)
        if ready is not None:
            ready.set()
        try:
            for consumer in others:
                consumer.start()
            main.run()  # its signal handlers, set last, are the process's
        finally:
            for consumer in others:
                consumer.stop(graceful=True)
            stop.set()
            if console is not None:
                console.stop()
            if scp is not None:
                scp.stop()
                self.store.set_component("scp", "stopped", time.time(), owner=self.owner)
            self._scp_obj = None
            log.info("gateway stopped")

    @staticmethod
    def _consumer(queue: Any, workers: int) -> Any:
        return queue.create_consumer(
            workers=workers,
            worker_type="thread",
            periodic=False,
            initial_delay=0.05,
            backoff=1.5,
            max_delay=0.5,
            scheduler_interval=1,
            graceful_signal="TERM",
        )

    def _console(self) -> Any:
        from gateway.console.app import create_app
        from gateway.console.server import ConsoleServer

        server = ConsoleServer(
            create_app(self.cfg, self.store, GatewayOperations(self)), self.cfg.http
        )
        server.start()
        self.console_url = server.url
        return server

    def _scp(self) -> Any:
        from gateway.dicom.scp import StorageSCP

        spool = Spool(self.cfg.paths.spool)
        receiver = Receiver(
            spool,
            self.store,
            limits=self.cfg.limits,
            storage=self.cfg.storage,
            crash=self.crash,
            returned=Spool(self.cfg.paths.returned),
            qa_peers=self.cfg.qa.peers,
        )
        scp = StorageSCP(
            self.cfg.ae_title,
            self.cfg.listen.host,
            self.cfg.listen.port,
            self.cfg.peers,
            receiver,
            limits=self.cfg.limits,
            tls=self.cfg.listen.tls,
            crash=self.crash,
        )
        spool.remove_stale_temporaries()
        recover_spool(spool, self.store)
        recover_returned(receiver.returned, self.store)
        return scp

    def _purge_loop(self, stop: threading.Event) -> None:
        from gateway.retention import purge

        roots = (self.cfg.paths.spool, self.cfg.paths.output, self.cfg.paths.returned)
        while not stop.wait(self.cfg.storage.purge_interval_s):
            try:
                report = purge(self.store, self.cfg.storage, roots)
                if report.studies:
                    log.info(
                        "retention: purged %d study(ies), %d file(s)", report.studies, report.files
                    )
            except Exception:  # keep purging next time; never take the gateway down
                log.exception("retention purge failed")

    def _warm_models(self) -> None:
        # Import the heavy stage modules now (rt-utils pulls OpenCV), not in the first job.
        import gateway.contour.rtstruct  # noqa: F401

        names = {m for r in self.cfg.rules for m in r.models}
        for name in sorted(names):
            component = f"model:{name}"
            self.store.set_component(component, "loading", time.time(), owner=self.owner)
            try:
                self.pipeline.segmenters.get(self.cfg.models[name]).warm_up()
                log.info("model %s warm", name)
            except Exception as exc:  # reported again, per job, when it is used
                log.error("model %s failed to load: %s", name, exc)
                why = f"{type(exc).__name__}: {exc}"[:500]
                self.store.set_component(component, "failed", time.time(), why, self.owner)
            else:
                self.store.set_component(component, "ok", time.time(), owner=self.owner)


def cancel(cfg: GatewayConfig, job_id: int, by: str) -> str:
    """Cancel a job for the operator ``by`` (:meth:`Pipeline.cancel`), beside a serving
    gateway like :func:`resend`. Raises KeyError for an unknown job."""
    return _beside(cfg).cancel(job_id, by)


class GatewayOperations:
    """What the console may ask of this gateway process (gateway.console.web.Operations)."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def resend(self, job_id: int, by: str) -> str:
        return self.gateway.pipeline.resend(job_id)

    def cancel(self, job_id: int, by: str) -> str:
        return str(self.gateway.pipeline.cancel(job_id, by))

    def echo(self, destination: str) -> str:
        st = self.gateway.echo_monitor.check(destination)
        if st.up:
            return f"{destination} answered C-ECHO in {st.rtt_ms or 0:.0f} ms"
        return f"{destination} did not answer: {st.last_error}"

    def pause(self, destination: str, by: str) -> str:
        return str(self.gateway.pipeline.pause_destination(destination, by))

    def resume(self, destination: str, by: str) -> str:
        return str(self.gateway.pipeline.resume_destination(destination, by))

    def self_test(self, destination: str, by: str) -> int:
        from gateway.monitor import selftest

        scp = self.gateway._scp_obj
        if scp is None:
            raise GatewayError("this process does not listen: the self-test needs our SCP")
        return selftest.start(self.gateway.cfg, self.gateway.store, destination, by, port=scp.port)

    def scp_listening(self) -> bool:
        scp = self.gateway._scp_obj
        return scp is not None and bool(scp.listening)


def resend(cfg: GatewayConfig, job_id: int) -> str:
    """Queue a failed job, or its parked deliveries, again for the running gateway's workers.

    Opens only the database and the queue (no spool, no listener): the CLI's ``resend`` runs
    beside a serving gateway. Raises KeyError for an unknown job."""
    return _beside(cfg).resend(job_id)


def pause_destination(cfg: GatewayConfig, name: str, by: str) -> str:
    """Pause a destination for the running gateway (the CLI's ``destination pause``)."""
    return _beside(cfg).pause_destination(name, by)


def resume_destination(cfg: GatewayConfig, name: str, by: str) -> str:
    """Resume a destination; its waiting deliveries go to the running gateway's workers."""
    return _beside(cfg).resume_destination(name, by)


def _beside(cfg: GatewayConfig) -> Pipeline:
    """A pipeline on the database and the queue only, to act beside a serving gateway."""
    return Pipeline(cfg, Store(cfg.database.url), HueyDispatcher(make_queues(cfg)))
