"""The gateway's one exception tree.

::

    GatewayError                      anything the gateway raises on purpose
    ├── ConfigError                   config.yaml or a model.yaml is invalid (carries every problem)
    ├── SchemaNotReady                a worker found the database at another release's schema
    ├── RetriableError                the queue tries again later, with backoff
    │   ├── PeerUnavailable           association refused/aborted, connection refused, timeout
    │   ├── PeerBusy                  the peer answered with a transient failure status (0xA7xx)
    │   └── OutOfResources            we refuse work for now: disk guard, per-study limits (0xA700)
    └── PermanentError                retrying cannot help: parked, visible, resendable by hand
        ├── InvalidInput              the received data cannot form a volume or is out of scope
        │   └── DatasetMismatch       a dataset does not match its SOP class (C-STORE 0xA900)
        ├── UidConflict               a UID already recorded for another study or series (0xC211)
        ├── ModelError                the model could not be loaded or failed on this input
        └── DeliveryRejected          the peer rejected the object (0xA9xx, 0xCxxx, ...)

Messages never contain patient names or IDs: UIDs, job ids and reasons only.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """Invalid configuration; ``problems`` lists ``(path, reason)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {r}" for p, r in problems))


class SchemaNotReady(GatewayError):
    """The database is not at this release's schema, and this process (a worker) does not
    migrate it: the receiver of this release does."""


class RetriableError(GatewayError):
    """A failure that may go away by itself: try again later."""


class PeerUnavailable(RetriableError):
    """The peer could not be reached or the association was refused or aborted."""


class PeerBusy(RetriableError):
    """The peer answered with a transient failure status (e.g. 0xA700 out of resources)."""


class OutOfResources(RetriableError):
    """We cannot take more now (free disk below the guard, a study over its limits)."""


class PermanentError(GatewayError):
    """A failure that retrying cannot fix."""


class InvalidInput(PermanentError):
    """The received instances cannot be used (inconsistent volume, missing series, ...)."""


class DatasetMismatch(InvalidInput):
    """A received dataset does not match its SOP class (no pixel data, wrong length, ...)."""


class UidConflict(PermanentError):
    """A received instance reuses a UID recorded for another study: its SOP Instance UID is
    stored in another study or series, or its Series Instance UID belongs to another study.
    Recording it would make one study's rows point at another study's files (a wrong-patient
    risk), so it is refused. ``reason`` is a fixed text, safe for the sender and the audit;
    ``detail`` names the UIDs, for the log only."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason} ({detail})" if detail else reason)


class ModelError(PermanentError):
    """The model could not be loaded or failed on this input."""


class DeliveryRejected(PermanentError):
    """The destination rejected the object with a failure status."""
