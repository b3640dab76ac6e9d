"""The operators' side of the configuration: the database and the task queue (``database``,
``queue``: embedded, or PostgreSQL and Redis when scaled out), the web console (``http``), the
destinations' echo monitor (``monitor``) and the alerts sent to people (``alerts``). Pure schema,
part of :class:`gateway.config.GatewayConfig`."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.segment.spec import Frozen


def invalid(title: str, problems: Sequence[tuple[tuple[str | int, ...], str]]) -> ValidationError:
    """Cross-field problems, each reported at the path of the value it is about (pydantic nests
    a ValidationError raised in a validator under that validator's own path)."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError("cross_check", "{reason}", {"reason": reason}),
                loc=loc,
                input=None,
            )
            for loc, reason in problems
        ],
    )


class DatabaseConfig(Frozen):
    """The SQLAlchemy URL: ``sqlite:///var/aircon.db`` embedded, or
    ``postgresql+psycopg://user:password@host/aircon`` for a receiver and its workers."""

    url: str = "sqlite:///var/aircon.db"


class QueueConfig(Frozen):
    """The task queue (Huey). ``sqlite``: a file of this process (embedded); ``redis``: shared
    by the receiver and the workers, with one queue for model work (``aircon worker``) and one
    for the rest (study checks' jobs are dispatched there by the receiver: deliveries, QA)."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    path: Path = Path("var/queue.db")
    url: str | None = None
    # Threads for deliveries and QA comparisons (``serve``, ``serve --role receiver``).
    workers: Annotated[int, Field(ge=1, le=16)] = 2
    # Jobs (models) run at once per process: 1 per GPU keeps one study's inference on it at a
    # time, and a worker takes the next task only when it is free (prefetch 1).
    model_workers: Annotated[int, Field(ge=1, le=8)] = 1
    # A running job or delivery holds a lease this long, renewed every third of it while its
    # process lives; when it expires, any gateway process sharing the database takes it over.
    lease_s: Annotated[float, Field(ge=1)] = 60.0
    # How often each process looks in the database for due study checks, expired leases and
    # work queued by another process.
    poll_s: Annotated[float, Field(gt=0, le=10)] = 0.25

    @model_validator(mode="after")
    def _redis_url(self) -> QueueConfig:
        if self.backend == "redis" and not self.url:
            raise invalid("QueueConfig", [(("url",), "required when queue.backend is redis")])
        return self


class HttpTls(Frozen):
    """The console's HTTPS certificate (PEM chain) and key."""

    certificate: Path
    private_key: Path


class AuthConfig(Frozen):
    """Console accounts (``aircon user add``). A session lasts ``session_hours`` after
    sign-in (and ends earlier on sign-out, a password or role change, or disabling). After
    ``max_failures`` wrong passwords in a row an account is locked for ``lockout_minutes``
    (every failure and lock is audited)."""

    session_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 12.0
    max_failures: Annotated[int, Field(ge=1, le=1000)] = 10
    lockout_minutes: Annotated[float, Field(gt=0)] = 15.0


class HttpConfig(Frozen):
    """The web console, ``/metrics``, ``/healthz`` and ``/readyz``, served by ``aircon serve``.

    Loopback by default. Listening on any other address needs ``tls`` (HTTPS, Secure cookies),
    or ``listen.tls``'s certificate is used. ``metrics_token``: when set, ``/metrics``,
    ``/healthz`` and ``/readyz`` want ``Authorization: Bearer <token>``; else they are open."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080  # 0: any free port (tests)
    tls: HttpTls | None = None
    metrics_token: str | None = None
    auth: AuthConfig = AuthConfig()
    # The operator's pages reload themselves this often (0: never).
    refresh_s: Annotated[float, Field(ge=0)] = 10.0


class MonitorConfig(Frozen):
    """Watching the destinations: a C-ECHO of each every ``echo_interval_s`` (its answer within
    ``echo_timeout_s``). A destination that did not answer is *down* from its first failed echo."""

    echo_interval_s: Annotated[float, Field(gt=0)] = 60.0
    echo_timeout_s: Annotated[float, Field(gt=0)] = 10.0


class AlertConditions(Frozen):
    """When the operators are told. ``null`` switches a condition off."""

    destination_down_minutes: Annotated[float, Field(ge=0)] | None = 5.0
    job_failed: bool = True
    delivery_parked: bool = True
    disk_guard: bool = True
    queue_backlog: Annotated[int, Field(ge=1)] | None = 50  # jobs queued or waiting to run
    model_load_failed: bool = True
    qa_drift: bool = True
    incident_candidate: bool = True


class AlertsConfig(Frozen):
    """Where alerts go: Apprise URLs (``mailto://``/``mailtos://`` for SMTP, ``json://`` or
    ``jsons://`` for a JSON webhook, ``msteams://``, ``slack://``, ...; see
    https://github.com/caronc/apprise/wiki). An alert is sent when its condition starts,
    re-sent every ``resend_minutes`` while it lasts, and a *resolved* message follows when it
    ends. Conditions are checked every ``check_interval_s``. Messages carry UIDs and reasons,
    never patient data."""

    sinks: tuple[str, ...] = ()
    resend_minutes: Annotated[float, Field(gt=0)] = 60.0
    check_interval_s: Annotated[float, Field(gt=0)] = 15.0
    conditions: AlertConditions = AlertConditions()

    @field_validator("sinks")
    @classmethod
    def _apprise_understands(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            return value
        import apprise  # only when sinks are configured: it loads every plugin

        # The URL is not repeated in the error, and Apprise's own log line that repeats it is
        # held back: it may carry a password or a webhook token.
        quiet = logging.getLogger("apprise")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL + 1)
        try:
            unknown = [i for i, u in enumerate(value) if apprise.Apprise.instantiate(u) is None]
        finally:
            quiet.setLevel(level)
        if unknown:
            raise ValueError(
                f"sink(s) {unknown} (counting from 0): Apprise does not understand the URL; "
                "see https://github.com/caronc/apprise/wiki (mailto://, json://, msteams://, ...)"
            )
        return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_http(
    http: HttpConfig,
    listen_tls: Any,
    base_dir: Path,
    resolve_files: Callable[[Path, Any], Any],
) -> tuple[HttpConfig, list[tuple[str, str]]]:
    """``http`` with its TLS files resolved against ``base_dir``; beyond loopback without
    ``http.tls``, the DICOM listener's certificate (``listen.tls``) is used, and without either
    it is a problem: the console is never served in the clear to the network."""
    if http.tls is not None:
        return http.model_copy(update={"tls": resolve_files(base_dir, http.tls)}), []
    if not http.enabled or is_loopback(http.host):
        return http, []
    if listen_tls is None:
        return http, [
            (
                "http.host",
                f"the console listens on {http.host}, beyond this machine: give http.tls "
                "(certificate and private_key) so it is served over HTTPS",
            )
        ]
    shared = HttpTls(certificate=listen_tls.certificate, private_key=listen_tls.private_key)
    return http.model_copy(update={"tls": shared}), []
