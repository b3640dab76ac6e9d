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


EXPLAIN_MAX_CHARS = 500
_SHOWN_SERIES = 4  # per condition; the rest are counted


def _short(text: str, limit: int = 32) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show_value(value: Any) -> str:
    return "absent" if value is None or value == "" else repr(_short(_as_text(value)))


def _show_condition(condition: Condition) -> str:
    if isinstance(condition, str):
        return repr(_short(condition))
    if isinstance(condition, Range):
        low = "-inf" if condition.min is None else f"{condition.min:g}"
        high = "inf" if condition.max is None else f"{condition.max:g}"
        return f"in [{low}, {high}]"
    return f"containing [{', '.join(condition)}]"


def _series_label(s: SeriesInfo, position: int) -> str:
    number = s.attributes.get("SeriesNumber")
    return f"series {_as_text(number)}" if number not in (None, "") else f"series #{position}"


def _selector_failure(selector: SeriesSelector, series: Sequence[SeriesInfo]) -> str:
    """Why no series of the study meets ``selector``: the conditions no series meets, with what
    each series has instead; else, per series, the first condition it misses."""
    if not series:
        return "the study has no series"
    labels = [_series_label(s, i) for i, s in enumerate(series, 1)]

    def listing(items: list[str]) -> str:
        more = len(items) - _SHOWN_SERIES
        return ", ".join(items[:_SHOWN_SERIES]) + (f", +{more} more" if more > 0 else "")

    unmet = []
    for keyword, condition in selector.conditions.items():
        values = [s.attributes.get(keyword) for s in series]
        if not any(condition_holds(condition, v) for v in values):
            seen = listing(
                [f"{lb}: {_show_value(v)}" for lb, v in zip(labels, values, strict=True)]
            )
            unmet.append(
                f"{keyword} {_show_condition(condition)} not matched by any series ({seen})"
            )
    if unmet:
        return " and ".join(unmet)
    misses = []
    for label, s in zip(labels, series, strict=True):
        keyword, condition = next(
            (k, c)
            for k, c in selector.conditions.items()
            if not condition_holds(c, s.attributes.get(k))
        )
        value = _show_value(s.attributes.get(keyword))
        misses.append(f"{label}: {keyword} {value} not {_show_condition(condition)}")
    return f"no single series meets all its series conditions ({listing(misses)})"


def explain(rules: Sequence[RuleConfig], study: StudyInfo) -> str:
    """Why ``study`` was (not) routed, short enough to store and show in a table: for each
    rule in config order, which of its conditions failed and what the series had instead, up
    to the first rule that matches. Shows only AE titles and the series-level attributes the
    receiver keeps (``SeriesInfo.attributes``), never patient data."""
    if not rules:
        return "no routing rules configured"
    parts = []
    for rule in rules:
        m = rule.match
        failed = []
        for what, pattern, title in (
            ("calling AE", m.calling_ae, study.calling_ae),
            ("called AE", m.called_ae, study.called_ae),
        ):
            if pattern is not None and not re.fullmatch(pattern, title):
                failed.append(f"{what} {title!r} not matched by {_show_condition(pattern)}")
        if m.series is not None and not any(
            series_matches(m.series, s.attributes) for s in study.series
        ):
            failed.append(_selector_failure(m.series, study.series))
        if not failed:
            parts.append(f"rule {rule.name}: matches")
            break
        parts.append(f"rule {rule.name}: " + " and ".join(failed))
    text = "; ".join(parts)
    return text if len(text) <= EXPLAIN_MAX_CHARS else text[: EXPLAIN_MAX_CHARS - 3] + "..."


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
