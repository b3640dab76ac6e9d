"""Routing (pure): which rule applies to a study, and which series feed a model's channels.

Rules are tried in config order; the first rule whose conditions all hold applies. A rule's
``series`` condition holds when at least one series of the study matches it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gateway.config import RuleConfig
from gateway.db.records import SeriesInfo, StudyInfo
from gateway.segment.spec import Condition, InputChannel, Range, SeriesSelector


def _as_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "\\".join(_as_text(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


def condition_holds(condition: Condition, value: Any) -> bool:
    """One selector condition (regex, items contained, numeric range) on one attribute value."""
    if value is None or value == "":
        return False
    if isinstance(condition, str):
        return re.search(condition, _as_text(value)) is not None
    if isinstance(condition, Range):
        try:
            return condition.contains(float(value))
        except (TypeError, ValueError):
            return False
    items = value if isinstance(value, list | tuple) else str(value).split("\\")
    have = {str(v).strip().upper() for v in items}
    return all(c.strip().upper() in have for c in condition)


def series_matches(selector: SeriesSelector, attributes: Mapping[str, Any]) -> bool:
    """True when every condition of ``selector`` holds for ``attributes``."""
    return all(
        condition_holds(condition, attributes.get(keyword))
        for keyword, condition in selector.conditions.items()
    )


def rule_matches(rule: RuleConfig, study: StudyInfo) -> bool:
    m = rule.match
    if m.calling_ae is not None and not re.fullmatch(m.calling_ae, study.calling_ae):
        return False
    if m.called_ae is not None and not re.fullmatch(m.called_ae, study.called_ae):
        return False
    if m.series is not None:
        return any(series_matches(m.series, s.attributes) for s in study.series)
    return True


def route(rules: Iterable[RuleConfig], study: StudyInfo) -> RuleConfig | None:
    """The first rule that matches ``study``, or None."""
    return next((r for r in rules if rule_matches(r, study)), None)


def select_series(channel: InputChannel, series: Sequence[SeriesInfo]) -> SeriesInfo | None:
    """The series feeding ``channel``: among matches, the highest SeriesNumber wins (a repeat
    scan has a higher number), then the most recently received, then the highest Series
    Instance UID. Deterministic for a given input."""
    candidates = [s for s in series if series_matches(channel.select, s.attributes)]
    if not candidates:
        return None

    def key(s: SeriesInfo) -> tuple[float, float, str]:
        number = s.attributes.get("SeriesNumber")
        return (float(number) if number is not None else -1.0, s.last_received_at, s.series_uid)

    return max(candidates, key=key)
