"""``aircon destinations`` and ``aircon destination pause|resume``: the destinations' echo
status and the operator's pause switch."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import GatewayError


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_destinations(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.db.database import Store
    from gateway.monitor.echo import EchoMonitor, destinations_overview

    store = Store(cfg.database.url)
    if args.echo:
        EchoMonitor(cfg, store, cfg.ae_title).check_all()
    rows = destinations_overview(cfg, store)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    table = [
        (
            r.name,
            f"{r.ae_title}@{r.host}:{r.port}",
            "never checked" if r.up is None else ("up" if r.up else "DOWN"),
            "-" if r.rtt_ms is None else f"{r.rtt_ms:.0f} ms",
            _when(r.last_success_at),
            _when(r.down_since),
            f"paused by {r.paused_by}" if r.paused else "no",
            str(r.waiting),
        )
        for r in rows
    ]
    header = (
        *("name", "AE@host:port", "state", "rtt"),
        *("last success", "down since", "paused", "waiting"),
    )
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if r.up is False and r.last_error:
            print(f"{r.name}: {r.last_error}")
    return 0


def cmd_destination(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.app import pause_destination, resume_destination

    act = pause_destination if args.destination_command == "pause" else resume_destination
    try:
        print(act(cfg, args.name, args.by))
    except KeyError:
        known = ", ".join(sorted(cfg.destinations)) or "none configured"
        raise GatewayError(f"no destination '{args.name}' (destinations: {known})") from None
    return 0


def add_parsers(sub: Any) -> dict[str, Callable[[GatewayConfig, argparse.Namespace], int]]:
    d = sub.add_parser(
        "destinations",
        help="each destination: up or down (C-ECHO), round-trip, paused, deliveries waiting",
    )
    d.add_argument("--echo", action="store_true", help="C-ECHO every destination now first")
    d.add_argument("--json", action="store_true")
    p = sub.add_parser("destination", help="pause or resume deliveries to a destination")
    psub = p.add_subparsers(dest="destination_command", required=True)
    for name, text in (
        ("pause", "stop deliveries to it: they wait, their attempts not counted"),
        ("resume", "deliver to it again: what waits goes out now"),
    ):
        x = psub.add_parser(name, help=text)
        x.add_argument("name", help="a destination name from config.yaml")
        x.add_argument("--by", required=True, help="who does it (written to the audit)")
    return {"destinations": cmd_destinations, "destination": cmd_destination}
