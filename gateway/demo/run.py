"""``aircon demo``: a study in over C-STORE, an RTSTRUCT out, on loopback.

Starts the gateway (``aircon serve``, a real subprocess) on loopback with the given (embedded)
config.yaml and a local receiving node as the planning system, sends a study, waits for the
RTSTRUCT, rasterises it on the series it references and reports per-ROI volume and the model
that made each ROI, per-stage timings, and a PNG of the contours over the MR slices.

Two studies:

* default: real anatomy, ProstateX-0000 (TCIA). All its series from
  ``<repo>/../shared/data/prostatex/ProstateX-0000`` when that exists, else the bundled T2
  series in ``<repo>/demo-data/ProstateX-0000-T2``; or any folder of DICOM files (``--study``).
  The config's rules pick the series and models (``prostate-mr``: TAPS on the axial T2). There is
  no truth: ``ok`` means a job finished, the RTSTRUCT arrived and at least one ROI has voxels.
* ``--phantom``: a synthetic four-series phantom study (T2 + Dixon) with known truth; Dice per
  ROI against the truth on the referenced series' grid, ``ok`` when every Dice >= 0.9.

Nothing here prints or logs patient names or IDs from the DICOM headers.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.demo.launcher import Gateway, free_port, write_config
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

DEMO_SEED = 9001  # not among the training phantoms' seeds
DEMO_CALLING_AE = "AIRCON"
DEMO_TIMEOUT_S = 900.0

REPO = Path(__file__).resolve().parents[2]
PROSTATEX_SHARED = REPO.parent / "shared" / "data" / "prostatex" / "ProstateX-0000"
PROSTATEX_BUNDLED = REPO / "demo-data" / "ProstateX-0000-T2"
PROSTATEX_LABEL = "ProstateX-0000 (TCIA)"
_MODEL_DISPLAY = {"taps": "TAPS"}


def _png(
    path: Path,
    image: np.ndarray,
    masks: dict[str, np.ndarray],
    colors: dict[str, tuple[int, int, int]],
    title: str = "AIRCON demo: AI contours (demonstration model, synthetic phantom)",
    crop: bool = False,
) -> None:
    """Up to six slices through the contoured region with the contours drawn over them;
    ``crop`` zooms in on the contours (with a margin of context)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    union = np.any(np.stack(list(masks.values())), axis=0) if masks else np.zeros(image.shape, bool)
    zs = np.flatnonzero(union.any(axis=(1, 2)))
    if zs.size == 0:
        zs = np.array([image.shape[0] // 2])
    picks = np.unique(np.linspace(zs[0], zs[-1], num=min(6, zs.size)).round().astype(int))
    window = (slice(None), slice(None))
    if crop and union.any():
        ys, xs = np.flatnonzero(union.any(axis=(0, 2))), np.flatnonzero(union.any(axis=(0, 1)))
        my = max(30, int(0.75 * (ys[-1] - ys[0] + 1)))
        mx = max(30, int(0.75 * (xs[-1] - xs[0] + 1)))
        window = (
            slice(max(0, ys[0] - my), min(image.shape[1], ys[-1] + 1 + my)),
            slice(max(0, xs[0] - mx), min(image.shape[2], xs[-1] + 1 + mx)),
        )
    shown = image[picks][:, window[0], window[1]]
    vmin, vmax = (float(v) for v in np.percentile(shown, (0.5, 99.5)))
    fig, axes = plt.subplots(1, len(picks), figsize=(3 * len(picks), 3.6), squeeze=False)
    for ax, z in zip(axes[0], picks, strict=True):
        ax.imshow(image[z][window], cmap="gray", vmin=vmin, vmax=max(vmax, vmin + 1e-6))
        for name, m in masks.items():
            if m[z].any():
                ax.contour(
                    m[z][window].astype(float),
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
    if handles:
        fig.legend(
            handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# What is sent


@dataclass
class _Source:
    """The study the demo sends: its files, a description for the report (no patient data)."""

    kind: str  # prostatex | prostatex-t2 | study | phantom
    label: str
    files: list[Path]
    path: Path | None = None


def _dicom_files(root: Path) -> list[Path]:
    from pydicom.misc import is_dicom

    candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [p for p in candidates if is_dicom(p)]


def _real_source(study: Path | None) -> _Source:
    if study is not None:
        if not study.exists():
            raise GatewayError(f"--study {study}: no such file or folder")
        files = _dicom_files(study)
        if not files:
            raise GatewayError(f"--study {study}: no DICOM files found")
        # Not labelled by its folder name: clinics often name folders after the patient.
        return _Source("study", "the study given with --study", files, study)
    if PROSTATEX_SHARED.is_dir():
        files = _dicom_files(PROSTATEX_SHARED)
        if files:
            return _Source("prostatex", PROSTATEX_LABEL, files, PROSTATEX_SHARED)
    if PROSTATEX_BUNDLED.is_dir():
        files = _dicom_files(PROSTATEX_BUNDLED)
        if files:
            return _Source("prostatex-t2", PROSTATEX_LABEL, files, PROSTATEX_BUNDLED)
    raise GatewayError(
        f"demo study not found: neither {PROSTATEX_SHARED} nor {PROSTATEX_BUNDLED} holds DICOM "
        "files (use --study PATH to send another study, or --phantom)"
    )


# ---------------------------------------------------------------------------------------------
# The running gateway and planning system


@dataclass
class _Loopback:
    work: Path
    cfg: Any
    gateway: Gateway
    node: Any
    db: Any
    t_start: float

    def send(self, files: Sequence[Path]) -> None:
        from gateway.dicom.scu import store

        store(self.gateway.dest, DEMO_CALLING_AE, list(files), timeout=60)

    def wait_rtstruct(self, timeout: float) -> Path:
        """The first RTSTRUCT the planning system received; fails early when every job failed
        or the gateway exited."""
        deadline = time.monotonic() + timeout
        next_check = 0.0
        proc = self.gateway.proc
        assert proc is not None
        while not self.node.files():
            if proc.poll() is not None:
                raise GatewayError(f"the gateway exited with status {proc.returncode}")
            now = time.monotonic()
            if now > deadline:
                raise GatewayError(
                    f"no RTSTRUCT arrived within {timeout:.0f} s; see {self.work}/gateway.log "
                    f"and `aircon -c {self.work}/config.yaml jobs`"
                )
            if now >= next_check:
                next_check = now + 1.0
                jobs = self.db.list_jobs(limit=20)
                if jobs and all(j.state == "failed" for j in jobs):
                    j = jobs[0]
                    raise GatewayError(f"job {j.id} (rule {j.rule}) failed: {j.reason}")
            time.sleep(0.2)
        return self.node.files()[0]

    def finished_job(self, timeout: float = 20.0) -> Any:
        """The newest job, once it is done or failed (or as it is after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.db.list_jobs(limit=1)
            if (jobs and jobs[0].state in ("done", "failed")) or time.monotonic() > deadline:
                return jobs[0] if jobs else None
            time.sleep(0.2)


@contextmanager
def _loopback(cfg_path: Path, work: Path) -> Iterator[_Loopback]:
    from gateway.demo.node import ReceivingNode

    node = ReceivingNode(work / "planning", ae_title="PLANNING", port=free_port())
    gateway = Gateway(
        write_config(
            work,
            free_port(),
            source=cfg_path,
            destination_port=node.port,
            destination_ae=node.ae_title,
            peer=DEMO_CALLING_AE,
        ),
        calling_ae=DEMO_CALLING_AE,
    )
    cfg = gateway.cfg  # fails here, before starting anything, when invalid
    node.start()
    try:
        t_start = time.monotonic()
        with gateway:
            yield _Loopback(work, cfg, gateway, node, gateway.store(), t_start)
    finally:
        node.stop()


# ---------------------------------------------------------------------------------------------
# Reading the result


def _referenced_series(rt: Any, series_uids: set[str], sop_to_series: dict[str, str]) -> str:
    """The sent series the RTSTRUCT's contours lie on: RTReferencedSeriesSequence, else the
    series of the images in the contours' ContourImageSequence."""
    named = [
        str(series.SeriesInstanceUID)
        for frame in rt.get("ReferencedFrameOfReferenceSequence", [])
        for study in frame.get("RTReferencedStudySequence", [])
        for series in study.get("RTReferencedSeriesSequence", [])
    ]
    for uid in named:
        if uid in series_uids:
            return uid
    for roi in rt.get("ROIContourSequence", []):
        for contour in roi.get("ContourSequence", []):
            for image in contour.get("ContourImageSequence", []):
                found = sop_to_series.get(str(image.ReferencedSOPInstanceUID))
                if found is not None:
                    return found
    raise GatewayError("the RTSTRUCT references none of the series that were sent")


def _roi_meta(rt: Any, job: Any) -> dict[str, dict[str, Any]]:
    """Per ROI name: its display colour and the model (and version) that made it, from the
    job's typed outcome (the RTSTRUCT carries the same provenance)."""
    numbers = {int(r.ROINumber): r for r in rt.StructureSetROISequence}
    colors = {
        int(c.ReferencedROINumber): tuple(int(v) for v in c.get("ROIDisplayColor", [255, 0, 0]))
        for c in rt.get("ROIContourSequence", [])
    }
    by_name = {r.name: r.provenance for r in job.job_outcome.rois} if job else {}
    meta: dict[str, dict[str, Any]] = {}
    for number, roi in numbers.items():
        name = str(roi.ROIName)
        prov = by_name.get(name)
        meta[name] = {
            "model": prov.model_name if prov else "",
            "model_version": prov.model_version if prov else "",
            "color": colors.get(number, (255, 0, 0)),
        }
    return meta


def _models_summary(job: Any, descriptions: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per model of the job: state, version, the series it read (by description), timings."""
    out: dict[str, dict[str, Any]] = {}
    for name, o in job.job_outcome.models.items() if job else ():
        entry: dict[str, Any] = {"state": o.state.value}
        if o.provenance is not None:
            entry["version"] = o.provenance.model_version
        if o.reason:
            entry["reason"] = o.reason
        if o.state.value == "done":
            entry.update(volume_s=o.volume_s, wait_s=o.wait_s, segment_s=o.segment_s)
            entry["inputs"] = [descriptions.get(u, u) for u in o.input_series]
        out[name] = entry
    return out


def _timings(loop: _Loopback, job: Any) -> dict[str, float]:
    """Per-stage seconds (:func:`gateway.job.stage_timings`), each model's inference time
    (``segment:<model>``), the merge, and the demo's wall time."""
    from gateway.db.work import timings as job_timings

    timings = dict(job_timings(job)) if job else {}
    if job:
        outcome = job.job_outcome
        for name, o in outcome.models.items():
            if o.state.value == "done":
                timings[f"segment:{name}"] = o.segment_s
        timings["merge"] = outcome.merge_s
    timings["demo_wall"] = round(time.monotonic() - loop.t_start, 2)
    return timings


def _model_label(models: dict[str, dict[str, Any]]) -> str:
    done = [n for n, m in models.items() if m.get("state") == "done"] or list(models)
    names = [_MODEL_DISPLAY.get(n, n) for n in done]
    return (", ".join(names) or "no") + (" model" if len(names) == 1 else " models")


# ---------------------------------------------------------------------------------------------
# The demo


def run_demo(
    cfg_path: Path,
    out_dir: Path | None = None,
    as_json: bool = False,
    timeout: float = DEMO_TIMEOUT_S,
    phantom: bool = False,
    study: Path | None = None,
) -> dict[str, Any]:
    """Run the demo; print the summary (text, or one JSON object with ``as_json``) and return
    it. ``phantom``: the synthetic phantom study with Dice against its truth; else ``study``
    (a folder of DICOM files) or ProstateX-0000."""
    if phantom and study is not None:
        raise GatewayError("--phantom and --study exclude each other")
    if not cfg_path.is_file():
        raise GatewayError(
            f"config file {cfg_path} not found (run from the repository root "
            "or pass -c path/to/config.yaml)"
        )
    source = None if phantom else _real_source(study)  # before emptying anything
    work = Path(out_dir) if out_dir else Path.cwd() / "aircon-demo"
    if work.exists():
        shutil.rmtree(work)  # each demo run starts from an empty gateway
    work.mkdir(parents=True)
    with _loopback(cfg_path, work) as loop:
        if phantom:
            summary = _phantom_run(loop, timeout)
        else:
            assert source is not None
            summary = _real_run(loop, source, timeout)
    if as_json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return summary


def _real_run(loop: _Loopback, source: _Source, timeout: float) -> dict[str, Any]:
    from pydicom import dcmread

    from gateway.contour.reader import rasterize_rtstruct
    from gateway.imaging import read_series, volume_cc

    headers = {p: dcmread(p, stop_before_pixels=True) for p in source.files}
    by_series: dict[str, list[Path]] = {}
    descriptions: dict[str, str] = {}
    for p, ds in headers.items():
        uid = str(ds.get("SeriesInstanceUID", ""))
        by_series.setdefault(uid, []).append(p)
        descriptions[uid] = str(ds.get("SeriesDescription", "")) or f"series {len(descriptions)}"
    sop_to_series = {str(ds.SOPInstanceUID): str(ds.SeriesInstanceUID) for ds in headers.values()}

    loop.send(source.files)
    log.info(
        "demo: sent %d instances in %d series; waiting for the RTSTRUCT",
        len(source.files),
        len(by_series),
    )
    rt_path = loop.wait_rtstruct(timeout)
    rt = dcmread(rt_path)
    job = loop.finished_job()
    ref_uid = _referenced_series(rt, set(by_series), sop_to_series)
    volume = read_series(by_series[ref_uid])
    masks = rasterize_rtstruct(rt, volume)
    spacing = volume.image.GetSpacing()
    meta = _roi_meta(rt, job)
    rois = [
        {
            "name": name,
            "model": meta[name]["model"],
            "model_version": meta[name]["model_version"],
            "voxels": int(np.count_nonzero(m)),
            "volume_cc": round(volume_cc(m, spacing), 2),
        }
        for name, m in masks.items()
    ]
    models = _models_summary(job, descriptions)
    label = f"{source.label}, {_model_label(models)}"
    png = loop.work / "contours.png"
    import SimpleITK as sitk

    _png(
        png,
        sitk.GetArrayFromImage(volume.image),
        masks,
        {n: meta[n]["color"] for n in masks},
        title=f"AIRCON demo: {label}, not reviewed ({descriptions[ref_uid]})",
        crop=True,
    )
    ok = job is not None and job.state == "done" and any(r["voxels"] > 0 for r in rois)
    return {
        "ok": ok,
        "rtstruct": str(rt_path),
        "rtstruct_uid": str(rt.SOPInstanceUID),
        "rois": rois,
        "timings_s": _timings(loop, job),
        "png": str(png),
        "work_dir": str(loop.work),
        "models": models,
        "source": {
            "kind": source.kind,
            "label": source.label,
            "path": str(source.path) if source.path else None,
            "instances": len(source.files),
            "series": len(by_series),
            "reference_series": descriptions[ref_uid],
        },
        "job": _job_summary(job),
        "note": "real patient anatomy; research model output, not reviewed, no truth to "
        "compare with",
    }


def _phantom_run(loop: _Loopback, timeout: float) -> dict[str, Any]:
    import SimpleITK as sitk
    from pydicom import dcmread

    from gateway.contour.reader import dice, rasterize_rtstruct
    from gateway.demo.phantom import LABEL_NAMES, make_study, write_study
    from gateway.imaging import read_series, volume_cc

    study = make_study(DEMO_SEED)
    written = write_study(study, loop.work / "study", seed=DEMO_SEED)
    files = [f for info in written.values() for f in info.files]
    loop.send(files)
    log.info(
        "demo: sent %d phantom instances in %d series; waiting for the RTSTRUCT",
        len(files),
        len(written),
    )
    rt_path = loop.wait_rtstruct(timeout)
    rt = dcmread(rt_path)
    job = loop.finished_job()
    by_uid = {info.series_uid: key for key, info in written.items()}
    sop_to_series = {
        sop: info.series_uid for info in written.values() for sop in info.sop_instance_uids
    }
    ref_uid = _referenced_series(rt, set(by_uid), sop_to_series)
    ref_key = by_uid[ref_uid]
    volume = read_series(list(written[ref_key].files))
    masks = rasterize_rtstruct(rt, volume)
    truth = sitk.GetArrayFromImage(study.t2.labels if ref_key == "t2" else study.dixon_labels)
    spacing = volume.image.GetSpacing()
    meta = _roi_meta(rt, job)
    lookup = {n.lower(): n for n in masks}
    rois: list[dict[str, Any]] = []
    for label, truth_name in sorted(LABEL_NAMES.items()):
        name = lookup.get(truth_name.lower(), truth_name)
        m = masks.get(name, np.zeros(truth.shape, bool))
        rois.append(
            {
                "name": name,
                "model": meta.get(name, {}).get("model", ""),
                "model_version": meta.get(name, {}).get("model_version", ""),
                "voxels": int(np.count_nonzero(m)),
                "volume_cc": round(volume_cc(m, spacing), 2),
                "truth_cc": round(volume_cc(truth == label, spacing), 2),
                "dice": round(dice(m, truth == label), 4),
            }
        )
    truth_names = {r["name"] for r in rois}
    for name, m in masks.items():  # ROIs without a truth: reported, not scored
        if name not in truth_names:
            rois.append(
                {
                    "name": name,
                    "model": meta[name]["model"],
                    "model_version": meta[name]["model_version"],
                    "voxels": int(np.count_nonzero(m)),
                    "volume_cc": round(volume_cc(m, spacing), 2),
                    "truth_cc": None,
                    "dice": None,
                }
            )
    descriptions = {info.series_uid: key for key, info in written.items()}
    models = _models_summary(job, descriptions)
    png = loop.work / "contours.png"
    _png(
        png,
        sitk.GetArrayFromImage(volume.image),
        {r["name"]: masks.get(r["name"], np.zeros(truth.shape, bool)) for r in rois},
        {r["name"]: meta.get(r["name"], {}).get("color", (255, 0, 0)) for r in rois},
        title="AIRCON demo: AI contours (demonstration models, synthetic phantom)",
    )
    ok = (
        job is not None
        and job.state == "done"
        and all(r["dice"] >= 0.9 for r in rois if r["dice"] is not None)
    )
    return {
        "ok": ok,
        "rtstruct": str(rt_path),
        "rtstruct_uid": str(rt.SOPInstanceUID),
        "rois": rois,
        "timings_s": _timings(loop, job),
        "png": str(png),
        "work_dir": str(loop.work),
        "models": models,
        "source": {
            "kind": "phantom",
            "label": f"synthetic phantom, seed {DEMO_SEED}",
            "path": str(loop.work / "study"),
            "instances": len(files),
            "series": len(written),
            "reference_series": ref_key,
        },
        "job": _job_summary(job),
        "note": "demonstration models trained on synthetic phantoms only; not for clinical use",
    }


def _job_summary(job: Any) -> dict[str, Any] | None:
    if job is None:
        return None
    return {"id": job.id, "rule": job.rule, "state": job.state, "reason": job.reason}


def _print_summary(s: dict[str, Any]) -> None:
    src = s["source"]
    print(f"AIRCON demo: {'OK' if s['ok'] else 'FAILED'}   {src['label']}")
    print(
        f"sent {src['instances']} instance(s) in {src['series']} series; contours on "
        f"'{src['reference_series']}'"
    )
    job = s.get("job")
    if job:
        print(
            f"job {job['id']} rule {job['rule']}: {job['state']}"
            + (f" ({job['reason']})" if job["reason"] else "")
        )
    for name, m in s["models"].items():
        bits = [m["state"]]
        if m.get("version"):
            bits.insert(0, m["version"])
        if m.get("inputs"):
            bits.append("inputs " + ", ".join(m["inputs"]))
        if "segment_s" in m:
            bits.append(f"segment {m['segment_s']:.1f} s")
        if m.get("reason"):
            bits.append(m["reason"])
        print(f"model {name}: " + "; ".join(bits))
    print(f"RTSTRUCT {s['rtstruct_uid']}\n  -> {s['rtstruct']}")
    scored = any(r.get("dice") is not None for r in s["rois"])
    head = f"{'ROI':<14}{'model':<24}{'volume cc':>10}"
    print(head + (f"{'truth cc':>10}{'Dice':>8}" if scored else ""))
    for r in s["rois"]:
        made_by = f"{r['model']} {r['model_version']}".strip() or "?"
        line = f"{r['name']:<14}{made_by:<24}{r['volume_cc']:>10.1f}"
        if scored:
            line += f"{r['truth_cc']:>10.1f}{r['dice']:>8.3f}" if r.get("dice") is not None else ""
        print(line)
    print("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in s["timings_s"].items()))
    print(f"contours over the MR slices: {s['png']}")
    print(f"note: {s['note']}")
