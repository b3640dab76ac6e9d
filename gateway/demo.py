"""``aircon demo``: a phantom study in over C-STORE, an RTSTRUCT out, checked against the truth.

Starts the gateway (``aircon serve``, a real subprocess) on loopback with the embedded
config.yaml, a local receiving node as the planning system, generates a phantom pelvis MR study
with known truth, sends it, waits for the RTSTRUCT, and reports per-stage timings, per-ROI
volume and Dice, and a PNG of the contours over the MR slices.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gateway.errors import GatewayError

log = logging.getLogger(__name__)

DEMO_SEED = 9001  # not among the training phantoms' seeds
DEMO_CALLING_AE = "AIRCON"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(cfg_path: Path, work: Path, gateway_port: int, node_port: int) -> Path:
    """The embedded config with loopback ports, working folders under ``work`` and the
    destination pointed at the demo's receiving node."""
    raw: dict[str, Any] = yaml.safe_load(cfg_path.read_text()) or {}
    base = cfg_path.resolve().parent
    models = Path(raw.get("paths", {}).get("models", "models"))
    raw["listen"] = {"host": "127.0.0.1", "port": gateway_port}
    raw["paths"] = {
        "spool": str(work / "spool"),
        "output": str(work / "rtstruct"),
        "models": str(models if models.is_absolute() else base / models),
    }
    raw["database"] = {"url": f"sqlite:///{work / 'aircon.db'}"}
    raw["queue"] = {**raw.get("queue", {}), "backend": "sqlite", "path": str(work / "queue.db")}
    peers = raw.get("peers", [])
    if not any(p.get("ae_title") == DEMO_CALLING_AE for p in peers):
        peers.append({"ae_title": DEMO_CALLING_AE})
    raw["peers"] = peers
    raw["destinations"] = {
        name: {"ae_title": "PLANNING", "host": "127.0.0.1", "port": node_port}
        for name in (raw.get("destinations") or {"planning": None})
    }
    out = work / "config.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def _wait_echo(dest: Any, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the gateway accepts TCP connections, then until it answers C-ECHO."""
    from gateway.dicom.scu import echo

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise GatewayError(f"the gateway exited early with status {proc.returncode}")
        try:
            socket.create_connection((dest.host, dest.port), timeout=1).close()
        except OSError:
            time.sleep(0.2)
            continue
        if echo(dest, DEMO_CALLING_AE, timeout=5).ok:
            return
        time.sleep(0.3)
    raise GatewayError("the gateway did not answer C-ECHO in time")


def _png(
    path: Path,
    image: np.ndarray,
    masks: dict[str, np.ndarray],
    colors: dict[str, tuple[int, int, int]],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    union = np.any(np.stack(list(masks.values())), axis=0) if masks else np.zeros(image.shape, bool)
    zs = np.flatnonzero(union.any(axis=(1, 2)))
    if zs.size == 0:
        zs = np.array([image.shape[0] // 2])
    picks = np.unique(np.linspace(zs[0], zs[-1], num=min(6, zs.size)).round().astype(int))
    fig, axes = plt.subplots(1, len(picks), figsize=(3 * len(picks), 3.6), squeeze=False)
    for ax, z in zip(axes[0], picks, strict=True):
        ax.imshow(image[z], cmap="gray")
        for name, m in masks.items():
            if m[z].any():
                ax.contour(
                    m[z].astype(float),
                    levels=[0.5],
                    colors=[np.array(colors[name]) / 255],
                    linewidths=1.2,
                )
        ax.set_title(f"slice {z + 1}", fontsize=9)
        ax.axis("off")
    from matplotlib.lines import Line2D

    def rgb(n: str) -> tuple[float, float, float]:
        r, g, b = colors[n]
        return (r / 255, g / 255, b / 255)

    handles = [Line2D([], [], color=rgb(n), label=n) for n in masks]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle("AIRCON demo: AI contours (demonstration model, synthetic phantom)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_demo(
    cfg_path: Path, out_dir: Path | None = None, as_json: bool = False, timeout: float = 600.0
) -> dict[str, Any]:
    import SimpleITK as sitk
    from pydicom import dcmread

    from gateway.config import DestinationConfig, load_config
    from gateway.contours import dice, rasterize_rtstruct
    from gateway.dicom.node import ReceivingNode
    from gateway.dicom.scu import store
    from gateway.imaging import volume_cc
    from gateway.phantom import make_phantom, write_dicom_series
    from gateway.pipeline import stage_timings
    from gateway.store import Store

    if not cfg_path.is_file():
        raise GatewayError(
            f"config file {cfg_path} not found (run from the repository root "
            "or pass -c path/to/config.yaml)"
        )
    work = Path(out_dir) if out_dir else Path.cwd() / "aircon-demo"
    if work.exists():
        shutil.rmtree(work)  # each demo run starts from an empty gateway
    work.mkdir(parents=True)
    node = ReceivingNode(work / "planning", ae_title="PLANNING", port=free_port())
    node.start()
    gw_port = free_port()
    demo_cfg_path = demo_config(cfg_path, work, gw_port, node.port)
    cfg = load_config(demo_cfg_path)
    log_file = (work / "gateway.log").open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "-c", str(demo_cfg_path), "serve"],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
    )
    t_start = time.monotonic()
    try:
        gateway = DestinationConfig(ae_title=cfg.ae_title, host="127.0.0.1", port=gw_port)
        _wait_echo(gateway, 120, proc)
        phantom = make_phantom(DEMO_SEED)
        series = write_dicom_series(phantom, work / "study", seed=DEMO_SEED)
        store(gateway, DEMO_CALLING_AE, list(series.files))
        log.info("demo: sent %d instances; waiting for the RTSTRUCT", len(series.files))
        deadline = time.monotonic() + timeout
        while not node.files() and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise GatewayError(f"the gateway exited with status {proc.returncode}")
            time.sleep(0.2)
        files = node.files()
        if not files:
            raise GatewayError(
                f"no RTSTRUCT arrived within {timeout:.0f} s; see {work}/gateway.log"
            )
        time.sleep(0.5)  # let the gateway record the delivery
        rt = dcmread(files[0])
        refs = [dcmread(f, stop_before_pixels=True) for f in series.files]
        masks = rasterize_rtstruct(rt, refs)
        truth = sitk.GetArrayFromImage(phantom.labels)
        image = sitk.GetArrayFromImage(phantom.image)
        sx, sy, sz = phantom.image.GetSpacing()
        model = cfg.models[cfg.rules[0].models[0]]
        rois: list[dict[str, Any]] = []
        for label, spec in sorted(model.labels.items()):
            m = masks.get(spec.name, np.zeros(truth.shape, bool))
            rois.append(
                {
                    "name": spec.name,
                    "volume_cc": round(volume_cc(m, (sx, sy, sz)), 2),
                    "truth_cc": round(volume_cc(truth == label, (sx, sy, sz)), 2),
                    "dice": round(dice(m, truth == label), 4),
                }
            )
        png = work / "contours.png"
        _png(
            png,
            image,
            {r["name"]: masks.get(r["name"], np.zeros(truth.shape, bool)) for r in rois},
            {s.name: s.color for s in model.labels.values()},
        )
        db = Store(cfg.database.url)
        deadline = time.monotonic() + 10
        while True:
            jobs = db.list_jobs(limit=1)
            if (jobs and jobs[0].state == "done") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        job = jobs[0] if jobs else None
        timings = stage_timings(job, db.study_times(job.study_uid)) if job else {}
        timings["demo_wall"] = round(time.monotonic() - t_start, 2)
        ok = (
            bool(rois)
            and all(r["dice"] >= 0.9 for r in rois)
            and job is not None
            and job.state == "done"
        )
        summary = {
            "ok": ok,
            "rtstruct": str(files[0]),
            "rtstruct_uid": str(rt.SOPInstanceUID),
            "rois": rois,
            "timings_s": timings,
            "png": str(png),
            "work_dir": str(work),
            "model": f"{model.name} {model.version} (demonstration model, synthetic data only)",
        }
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        node.stop()
        log_file.close()
    if as_json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return summary


def _print_summary(s: dict[str, Any]) -> None:
    print(f"AIRCON demo: {'OK' if s['ok'] else 'FAILED'}   model {s['model']}")
    print(f"RTSTRUCT {s['rtstruct_uid']}\n  -> {s['rtstruct']}")
    print(f"{'ROI':<12}{'volume cc':>10}{'truth cc':>10}{'Dice':>8}")
    for r in s["rois"]:
        print(f"{r['name']:<12}{r['volume_cc']:>10.1f}{r['truth_cc']:>10.1f}{r['dice']:>8.3f}")
    print("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in s["timings_s"].items()))
    print(f"contours over the MR slices: {s['png']}")
