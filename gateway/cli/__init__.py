"""``aircon``: the command line. The only place that parses arguments and configures logging."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.cli import destinations as destination_commands
from gateway.cli import qa as qa_commands
from gateway.cli import users as user_commands
from gateway.config import DestinationConfig, GatewayConfig, load_config
from gateway.errors import ConfigError, GatewayError

log = logging.getLogger(__name__)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pynetdicom", "huey"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pynetdicom logs a traceback for every failed connection (refused, TLS handshake); our own
    # messages say what failed in one line.
    logging.getLogger("pynetdicom.transport").setLevel(logging.CRITICAL)


def _add_log_file(cfg: GatewayConfig) -> None:
    """Also log to ``paths.log`` (10 MB x 5 rotated files) when configured."""
    if cfg.paths.log is None:
        return
    from logging.handlers import RotatingFileHandler

    cfg.paths.log.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(cfg.paths.log, maxBytes=10 * 1024**2, backupCount=5)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def parse_when(text: str, now: float | None = None) -> float:
    """A point in time: ISO date or date-time (local time), or an age like ``90m``, ``24h``,
    ``7d`` before now."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        return now - float(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise GatewayError(
            f"cannot read time '{text}': use e.g. 2026-11-28, 2026-11-28T08:00 or 24h / 7d"
        ) from None


def cmd_audit(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from datetime import datetime

    from gateway.monitor.auditlog import write_csv

    rows = _store(cfg).audit_rows(
        since=parse_when(args.since), until=parse_when(args.until) if args.until else None
    )
    if args.csv:
        write_csv(rows, sys.stdout)
        return 0
    for r in rows:
        r["at"] = datetime.fromtimestamp(r["at"]).isoformat(timespec="milliseconds")
    for r in rows:
        who = f"{r['calling_ae']}@{r['address']}" if r["calling_ae"] else ""
        what = " ".join(
            f"{k}={r[k]}"
            for k in ("study_uid", "series_uid", "instances", "job_id", "model", "destination")
            if r[k] not in ("", None, 0)
        )
        print(f"{r['at']}  {r['event']:<11} {r['outcome']:<12} {who} {what} {r['detail']}".rstrip())
    return 0


def _peer(cfg: GatewayConfig, spec: str) -> DestinationConfig:
    """A destination by config name, or ``AE@host:port``."""
    if spec in cfg.destinations:
        return cfg.destinations[spec]
    m = re.fullmatch(r"([^@]{1,16})@([^:]+):(\d{1,5})", spec)
    if not m:
        raise GatewayError(
            f"unknown peer '{spec}': use a destination name from config.yaml or AE@host:port"
        )
    return DestinationConfig(ae_title=m[1], host=m[2], port=int(m[3]))


def cmd_check_config(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    print(
        f"config OK: AE {cfg.ae_title} on {cfg.listen.host}:{cfg.listen.port}, "
        f"{len(cfg.rules)} rule(s), {len(cfg.models)} model(s), "
        f"{len(cfg.destinations)} destination(s)"
    )
    from gateway.contour.structures import plan_structures

    for m in cfg.models.values():
        channels = ", ".join(c.name + (" (primary)" if c.primary else "") for c in m.inputs)
        print(
            f"  model {m.name} {m.version} sha256 {m.weights_sha256[:16]}... "
            f"[{m.kind}; inputs: {channels}]"
        )
    for rule in cfg.rules:
        rois = ", ".join(
            f"{p.roi.name} <- {p.model}" for p in plan_structures(rule, cfg.models, cfg.roi_names)
        )
        print(f"  rule {rule.name}: {' + '.join(rule.models)} -> {', '.join(rule.destinations)}")
        print(f"    structure set: {rois}")
    if cfg.qa.peers:
        print(f"  qa: approved structure sets from {', '.join(cfg.qa.peers)} are compared")
    else:
        print("  qa: no qa.peers: approved structure sets are kept but not compared")
    return 0


def cmd_serve(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.app import Gateway

    Gateway(cfg, role=args.role).serve()
    return 0


def cmd_worker(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.app import Gateway

    if args.device:
        segmentation = cfg.segmentation.model_copy(update={"device": args.device})
        cfg = cfg.model_copy(update={"segmentation": segmentation})
    Gateway(cfg, role="worker").serve()
    return 0


def cmd_echo(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.dicom.scu import echo

    dest = _peer(cfg, args.peer)
    t0 = time.monotonic()
    res = echo(dest, args.calling_ae or cfg.ae_title, timeout=args.timeout)
    ms = (time.monotonic() - t0) * 1000
    print(
        f"C-ECHO {dest.ae_title}@{dest.host}:{dest.port}: "
        f"{'success' if res.ok else 'FAILED'} ({res.detail}, {ms:.0f} ms)"
    )
    return 0 if res.ok else 1


def cmd_send(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gateway.dicom.scu import store

    dest = _peer(cfg, args.peer)
    root = Path(args.path)
    from pydicom.misc import is_dicom

    candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    files = [p for p in candidates if is_dicom(p)]
    if not files:
        raise GatewayError(f"no DICOM files under {root}")
    if len(files) < len(candidates):
        print(f"skipping {len(candidates) - len(files)} non-DICOM file(s)", file=sys.stderr)
    with tqdm(total=len(files), unit="inst", disable=args.quiet) as bar:
        statuses = store(
            dest,
            args.calling_ae or cfg.ae_title,
            files,
            timeout=args.timeout,
            progress=lambda n: bar.update(1),
            lost_retries=2,  # resending is idempotent: the same SOP Instance UIDs
        )
    print(f"sent {len(statuses)} instance(s) to {dest.ae_title}@{dest.host}:{dest.port}")
    return 0


def _store(cfg: GatewayConfig) -> Any:
    from gateway.db.database import Store

    return Store(cfg.database.url)


def cmd_studies(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    rows = _store(cfg).list_studies(limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    # Why a study was not processed (e.g. no rule matches), where the store recorded it.
    reasons = any(r.get("reason", "") for r in rows)
    print(
        f"{'Study Instance UID':<64}  series  instances  last received"
        + ("        reason" if reasons else "")
    )
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["last_received_at"]))
        line = f"{r['study_uid']:<64}  {r['series']:>6}  {r['instances']:>9}  {when}"
        print(f"{line}  {r.get('reason', '')}".rstrip() if reasons else line)
    return 0


def cmd_jobs(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.monitor.jobs import describe

    store = _store(cfg)
    rows = describe(store, store.list_jobs(limit=args.limit))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        t = " ".join(f"{k}={v:.1f}s" for k, v in r["timings_s"].items())
        print(
            f"job {r['job']:>4}  {r['state']:<10} rule={r['rule']} "
            f"models={','.join(r['models'])} "
            f"study={r['study_uid']}"
        )
        if r["reason"]:
            print(f"          reason: {r['reason']}")
        if t:
            print(f"          timings: {t}")
        for name, m in r["model_outcomes"].items():
            prov = m.get("provenance") or {}
            took = (
                f" {prov.get('model_version', '')}: wait {m['wait_s']:.1f}s, "
                f"segment {m['segment_s']:.1f}s"
                if m["state"] == "done"
                else f": {m['reason']}"
            )
            print(f"          model {name}: {m['state']}{took}")
        if r["rois"]:
            rois = ", ".join(
                f"{x['name']} {x['volume_cc']:.1f} cc ({x['provenance']['model_name']})"
                for x in r["rois"]
            )
            print(f"          ROIs: {rois}")
        for d in r["deliveries"]:
            print(
                f"          -> {d['destination']}: {d['state']} after {d['attempts']} "
                f"attempt(s) {d['last_status']}"
            )
    return 0


def cmd_resend(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.app import resend

    try:
        print(resend(cfg, args.job))
    except KeyError:
        raise GatewayError(f"no job {args.job}") from None
    return 0


def cmd_cancel(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.app import cancel

    try:
        print(cancel(cfg, args.job, args.by))
    except KeyError:
        raise GatewayError(f"no job {args.job}") from None
    return 0


def cmd_demo(cfg_path: Path, args: argparse.Namespace) -> int:
    from gateway.demo.run import REPO, run_demo

    if not cfg_path.is_file() and args.config == DEFAULT_CONFIG:
        cfg_path = REPO / DEFAULT_CONFIG  # the embedded config, from any working directory
    summary = run_demo(
        cfg_path,
        out_dir=Path(args.out) if args.out else None,
        as_json=args.json,
        timeout=args.timeout,
        phantom=args.phantom,
        study=Path(args.study) if args.study else None,
    )
    return 0 if summary["ok"] else 1


DEFAULT_CONFIG = "config.yaml"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,2})?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda or cuda:N")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aircon", description="AIRCON DICOM auto-contouring gateway")
    p.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    sv = sub.add_parser("serve", help="run the Storage SCP and the workers")
    sv.add_argument(
        "--role",
        choices=("all", "receiver"),
        default="all",
        help="all: everything in one process (default); receiver: the Storage SCP, study "
        "checks, deliveries, QA and the console, with the models in `aircon worker` processes",
    )
    w = sub.add_parser(
        "worker",
        help="run the models: take jobs from the shared queue and database (one per GPU)",
    )
    w.add_argument(
        "--device",
        type=_device,
        default=None,
        help="cpu, cuda or cuda:N (overrides segmentation.device; or pin with "
        "CUDA_VISIBLE_DEVICES)",
    )
    sub.add_parser("check-config", help="validate config.yaml and the models")
    e = sub.add_parser("echo", help="C-ECHO a peer (destination name or AE@host:port)")
    e.add_argument("peer")
    s = sub.add_parser("send", help="C-STORE a file or folder to a peer")
    s.add_argument("path")
    s.add_argument("peer")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    for x in (e, s):
        x.add_argument("--calling-ae", default=None)
        x.add_argument("--timeout", type=float, default=30.0)
    for name, newest in (("studies", "most recently arrived studies"), ("jobs", "newest jobs")):
        x = sub.add_parser(name, help=f"list {name}")
        x.add_argument("--json", action="store_true")
        x.add_argument(
            "--limit",
            type=_positive,
            default=50,
            metavar="N",
            help=f"show only the N {newest} (default: %(default)s)",
        )
    a = sub.add_parser(
        "audit", help="the audit trail: who sent what, which model ran, where it went"
    )
    a.add_argument(
        "--since", default="24h", help="ISO date/time or age (90m, 24h, 7d); default: 24h"
    )
    a.add_argument("--until", default=None, help="ISO date/time or age; default: now")
    a.add_argument("--csv", action="store_true", help="CSV with a header row")
    r = sub.add_parser("resend", help="retry a failed job or its parked deliveries")
    r.add_argument("job", type=int)
    c = sub.add_parser(
        "cancel",
        help="cancel a job: it is not run, delivered or routed again (resend takes it up)",
    )
    c.add_argument("job", type=int)
    c.add_argument("--by", required=True, help="who cancels it (recorded in the audit trail)")
    d = sub.add_parser(
        "demo",
        help="a study in, RTSTRUCT out, on loopback (default: ProstateX-0000, real anatomy)",
        description="Start the gateway on loopback with a local planning system, send a study "
        "and report the RTSTRUCT that comes back: per-ROI volume and model, per-stage timings "
        "and a PNG of the contours. Default study: ProstateX-0000 (TCIA), all series from "
        "../shared/data/prostatex/ProstateX-0000 next to the repository, else the bundled T2 "
        "series in demo-data/.",
    )
    what = d.add_mutually_exclusive_group()
    what.add_argument(
        "--phantom",
        action="store_true",
        help="send a synthetic phantom study instead and score the contours against its truth",
    )
    what.add_argument("--study", default=None, help="send this folder of DICOM files instead")
    d.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    d.add_argument(
        "--out",
        default=None,
        help="folder for the demo's files, emptied first (default: ./aircon-demo)",
    )
    d.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds to wait for the RTSTRUCT (default: %(default)s)",
    )
    COMMANDS.update(qa_commands.add_parsers(sub))
    COMMANDS.update(user_commands.add_parsers(sub))
    COMMANDS.update(destination_commands.add_parsers(sub))
    return p


COMMANDS = {
    "serve": cmd_serve,
    "worker": cmd_worker,
    "check-config": cmd_check_config,
    "echo": cmd_echo,
    "send": cmd_send,
    "studies": cmd_studies,
    "jobs": cmd_jobs,
    "resend": cmd_resend,
    "cancel": cmd_cancel,
    "audit": cmd_audit,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        if args.command == "demo":
            return cmd_demo(Path(args.config), args)
        cfg = load_config(Path(args.config))
        if args.command == "serve":
            _add_log_file(cfg)
        return COMMANDS[args.command](cfg, args)
    except ConfigError as exc:
        print(f"aircon: invalid configuration ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for path, reason in exc.problems:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"aircon: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"aircon: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
