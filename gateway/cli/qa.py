"""``aircon qa``, ``aircon incident`` and ``aircon validate``: the clinical QA loop's commands."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import GatewayError


def _store(cfg: GatewayConfig) -> Any:
    from gateway.db.database import Store

    return Store(cfg.database.url)


def _when(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


# -- aircon qa -------------------------------------------------------------------------------------


def _set_rows(store: Any, records: list[Any]) -> list[dict[str, Any]]:
    """Every structure set received, newest first, with its state, reason and ROI rows."""
    by_set: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        row = {k: _rounded(v) for k, v in dataclasses.asdict(r).items()}
        row["status"] = r.status.value
        by_set.setdefault(r.approved_uid, []).append(row)
    out = []
    for s in store.structure_sets():
        out.append(
            {
                "structure_set_uid": s.sop_instance_uid,
                "study_uid": s.study_uid,
                "calling_ae": s.calling_ae,
                "received_at": s.received_at,
                "approval_status": s.approval_status,
                "structure_set_datetime": s.structure_set_datetime,
                "state": s.state.value,
                "reason": s.reason,
                "job_id": s.job_id,
                "ai_structure_set_uid": s.ai_uid,
                "rois": by_set.get(s.sop_instance_uid, []),
            }
        )
    return out


def cmd_qa(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.qa import summary

    store = _store(cfg)
    stats = summary.summarize(store.qa_records(), now=time.time(), window_days=args.days)
    if args.csv:
        sys.stdout.write(summary.to_csv(stats))
        return 0
    if args.json:
        everything = store.qa_records(current=False)
        out = {
            "summary": stats,
            "structure_sets": _set_rows(store, everything),
            "alerts": [_alert(a) for a in store.alerts()],
        }
        print(json.dumps(out, indent=2))
        return 0
    from rich.console import Console

    console = Console()
    console.print(summary.roi_table(stats))
    added = summary.added_table(stats)
    if added is not None:
        console.print(added)
    unpaired = [s for s in store.structure_sets() if s.state.value == "unpaired"]
    for s in unpaired:
        console.print(f"unpaired structure set {s.sop_instance_uid}: {s.reason}")
    for a in store.alerts(state="open"):
        console.print(f"[bold red]alarm {a.id}[/] {_when(a.at)} {a.message}")
    return 0


def cmd_qa_sets(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    store = _store(cfg)
    rows = _set_rows(store, store.qa_records(current=False))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        paired = f" -> AI {r['ai_structure_set_uid']} (job {r['job_id']})" if r["job_id"] else ""
        print(f"{_when(r['received_at'])}  {r['state']:<10} {r['structure_set_uid']}{paired}")
        if r["reason"]:
            print(f"          {r['reason']}")
    return 0


CASE_COLUMNS = tuple(
    f
    for f in (
        "at job_id study_uid model model_version roi approved_roi status dice hd hd95 msd "
        "surface_dice apl volume_ai volume_approved volume_change unchanged tolerance_mm "
        "apl_tolerance_mm ai_uid approved_uid"
    ).split()
)


def cmd_qa_cases(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.cli import parse_when

    records = _store(cfg).qa_records(since=parse_when(args.since) if args.since else 0.0)
    rows = [
        {c: _rounded(getattr(r, c)) for c in CASE_COLUMNS} | {"status": r.status.value}
        for r in records
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    writer = csv.DictWriter(sys.stdout, fieldnames=CASE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return 0


def _alert(a: Any) -> dict[str, Any]:
    fields = "id kind severity at model model_version roi message state acknowledged_by"
    return {k: getattr(a, k) for k in fields.split()}


def cmd_qa_alerts(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    store = _store(cfg)
    if args.ack is not None:
        if not args.by:
            raise GatewayError("say who acknowledges the alert: --by NAME")
        try:
            store.acknowledge_alert(args.ack, args.by, time.time())
        except KeyError:
            raise GatewayError(f"no alert {args.ack}") from None
        except ValueError as exc:
            raise GatewayError(str(exc)) from None
        print(f"alert {args.ack} acknowledged by {args.by}")
        return 0
    rows = [_alert(a) for a in store.alerts()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for a in rows:
        print(f"{a['id']:>4}  {_when(a['at'])}  {a['state']:<12} {a['message']}")
    return 0


def cmd_qa_report(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.cli import parse_when
    from gateway.qa import service

    files = service.monitoring_report(cfg, _store(cfg), parse_when(args.since), Path(args.out))
    for p in (files.html, files.csv, files.summary_csv):
        print(p)
    return 0


# -- aircon incident ----------------------------------------------------------------------------

INCIDENT_COLUMNS = (
    "id state severity title description actions job_id study_uid model model_version roi "
    "opened_at opened_by decided_at decided_by closed_at closed_by"
).split()


def _incident(row: Any) -> dict[str, Any]:
    return {c: getattr(row, c) for c in INCIDENT_COLUMNS}


def cmd_incident(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    store = _store(cfg)
    now = time.time()
    action = args.incident_command
    if action == "list":
        rows = [_incident(r) for r in store.incidents(state=args.state)]
        if args.json:
            print(json.dumps(rows, indent=2))
        elif args.csv:
            writer = csv.DictWriter(sys.stdout, fieldnames=INCIDENT_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        else:
            for r in rows:
                what = f"{r['model']} {r['model_version']} {r['roi']}".strip()
                print(
                    f"{r['id']:>4}  {r['state']:<9} {r['severity'] or '-':<6} {what}: {r['title']}"
                )
        return 0
    if action == "open":
        from gateway.qa.service import open_incident

        try:
            new = open_incident(
                store,
                now,
                args.by,
                severity=args.severity,
                title=args.title or "",
                description=args.description,
                job_id=args.job,
                study_uid=args.study or "",
                model=args.model or "",
                model_version=args.model_version or "",
                roi=args.roi or "",
            )
        except KeyError:
            raise GatewayError(f"no job {args.job}") from None
        print(f"incident {new} opened")
        return 0
    try:
        if action == "show":
            row = store.incident(args.id)
            if row is None:
                raise KeyError(args.id)
            for k, v in _incident(row).items():
                shown = _when(v) if k.endswith("_at") else v
                print(f"{k:>14}: {'' if shown is None else shown}")
            return 0
        from gateway.qa.service import move_incident

        to = move_incident(
            store,
            args.id,
            now,
            args.by,
            action,
            severity=getattr(args, "severity", "") or "",
            reason=getattr(args, "reason", "") or "",
            actions=getattr(args, "actions", "") or "",
        )
    except KeyError:
        raise GatewayError(f"no incident {args.id}") from None
    except ValueError as exc:
        raise GatewayError(str(exc)) from None
    print(f"incident {args.id} {to}")
    return 0


def cmd_validate(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.qa import validation

    if args.model not in cfg.models:
        known = ", ".join(sorted(cfg.models)) or "none"
        raise GatewayError(f"unknown model '{args.model}' (known: {known})")
    out = Path(args.out) if args.out else None
    return validation.main(cfg, args.model, Path(args.cases), out, keep_rtstruct=args.keep_rtstruct)


# -- parsers --------------------------------------------------------------------------------------

SEVERITIES = ("low", "medium", "high")  # as gateway.qa.service.SEVERITIES


def add_parsers(sub: Any) -> dict[str, Callable[[GatewayConfig, argparse.Namespace], int]]:
    q = sub.add_parser(
        "qa",
        help="clinical QA: the approved structure sets compared with the AI ones",
        description="Per model version and ROI: cases, median and IQR of Dice, HD95, surface "
        "Dice and APL, %% unchanged, %% deleted, for the last --days and for all time "
        "(definitions: docs/qa-metrics.md).",
    )
    q.add_argument("--json", action="store_true", help="summary, structure sets and alerts")
    q.add_argument("--csv", action="store_true", help="the summary as CSV")
    q.add_argument("--days", type=int, default=30, help="recent window (default: 30)")
    qs = q.add_subparsers(dest="qa_command")
    s = qs.add_parser("sets", help="structure sets received: paired, compared or why not")
    s.add_argument("--json", action="store_true")
    c = qs.add_parser("cases", help="one row per ROI compared (CSV, or --json)")
    c.add_argument("--json", action="store_true")
    c.add_argument("--since", default=None, help="ISO date/time or age (7d); default: all")
    a = qs.add_parser("alerts", help="drift alarms; --ack ID --by NAME acknowledges one")
    a.add_argument("--json", action="store_true")
    a.add_argument("--ack", type=int, default=None, metavar="ID")
    a.add_argument("--by", default="")
    r = qs.add_parser("report", help="the monitoring report (HTML + CSV) of a period")
    r.add_argument("--since", default="30d", help="ISO date/time or age; default: 30d")
    r.add_argument("--out", default="qa-report", help="output folder (default: qa-report)")

    i = sub.add_parser("incident", help="the incident register")
    isub = i.add_subparsers(dest="incident_command", required=True)
    o = isub.add_parser("open", help="register an incident")
    o.add_argument("--job", type=int, default=None)
    o.add_argument("--study", default=None, help="Study Instance UID (when no --job)")
    o.add_argument("--model", default=None)
    o.add_argument("--model-version", default=None)
    o.add_argument("--roi", default=None)
    o.add_argument("--severity", choices=SEVERITIES, required=True)
    o.add_argument("--title", default=None)
    o.add_argument("--description", required=True)
    o.add_argument("--by", required=True, help="who registers it")
    lst = isub.add_parser("list", help="incidents and candidates")
    lst.add_argument("--state", choices=("candidate", "open", "closed", "dismissed"))
    lst.add_argument("--json", action="store_true")
    lst.add_argument("--csv", action="store_true")
    sh = isub.add_parser("show", help="one incident")
    sh.add_argument("id", type=int)
    for name, text in (
        ("accept", "accept a candidate: it becomes an open incident"),
        ("dismiss", "dismiss a candidate"),
        ("close", "close an open incident"),
    ):
        x = isub.add_parser(name, help=text)
        x.add_argument("id", type=int)
        x.add_argument("--by", required=True)
        if name == "accept":
            x.add_argument("--severity", choices=SEVERITIES, default=None)
        if name == "dismiss":
            x.add_argument("--reason", required=True)
        if name == "close":
            x.add_argument("--actions", required=True, help="what was done")

    v = sub.add_parser(
        "validate",
        help="run a model on a labelled test set and write the validation report",
        description="Each case folder holds a DICOM study and its truth (truth.dcm or truth/ "
        "with an RTSTRUCT or NIfTI labels). Exit 0: every ROI passes the model's qa.acceptance; "
        "1: a ROI fails or no thresholds are set; 2: error.",
    )
    v.add_argument("--model", required=True)
    v.add_argument("--cases", required=True)
    v.add_argument("--out", default=None, help="output folder (default: validation-MODEL-DATE)")
    v.add_argument(
        "--keep-rtstruct",
        action="store_true",
        help="also keep the RTSTRUCTs made (under OUT/rtstruct; they hold patient data)",
    )

    def qa(cfg: GatewayConfig, args: argparse.Namespace) -> int:
        sub_command = {
            "sets": cmd_qa_sets,
            "cases": cmd_qa_cases,
            "alerts": cmd_qa_alerts,
            "report": cmd_qa_report,
        }.get(args.qa_command or "", cmd_qa)
        return sub_command(cfg, args)

    return {"qa": qa, "incident": cmd_incident, "validate": cmd_validate}
