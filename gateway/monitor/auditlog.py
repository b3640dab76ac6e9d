"""The audit trail as CSV, one writer for ``aircon audit --csv`` and the console's export.

Times are local ISO date-times to the millisecond. Text that came from the network (AE titles,
details, statuses) is written so that a spreadsheet shows it as text: a cell starting with
``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading apostrophe (OWASP CSV
injection)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TextIO

from gateway.db.tables import AUDIT_COLUMNS

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return "" if value is None else value


def write_csv(rows: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """Write the header and ``rows`` (dicts with :data:`AUDIT_COLUMNS`, ``at`` in epoch
    seconds), oldest first as given; return how many rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(AUDIT_COLUMNS)
    n = 0
    for r in rows:
        values = [r[col] for col in AUDIT_COLUMNS]
        values[0] = datetime.fromtimestamp(r["at"]).isoformat(timespec="milliseconds")
        writer.writerow([values[0], *map(_cell, values[1:])])
        n += 1
    return n
