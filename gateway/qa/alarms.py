"""After a comparison: re-run the control charts of the touched model versions and ROIs, and
store what they raise (alarms in ``alerts``, incident candidates in ``incidents``), once each."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from gateway.config import GatewayConfig
from gateway.db.database import Store

log = logging.getLogger(__name__)


def evaluate(cfg: GatewayConfig, store: Store, keys: Iterable[tuple[str, str, str]]) -> None:
    """``keys``: (model, model_version, roi) whose charts a new comparison touched."""
    return None
