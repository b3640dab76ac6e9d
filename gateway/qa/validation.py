"""``aircon validate``: a model on a labelled test set, through the gateway's own code path.

Each case (:mod:`gateway.qa.cases`) goes the way a received study goes: its instances are
checked and described by the receiver's functions and recorded in a (temporary) database, whose
study record the assembly decides on (inputs, guardrails: a refusal is reported for the case);
the volumes are read and the model run by :func:`gateway.inference.run_models` with the config's
:class:`~gateway.segment.SegmenterCache`; the RTSTRUCT is built by
:func:`gateway.inference.structure_set` as a job builds it, written, read back and rasterised by
the independent reader on the reference series, and each ROI is compared with the truth by
:func:`gateway.qa.metrics.compare`. The report (:mod:`gateway.qa.report`) says pass or fail per
ROI against the model's ``qa.acceptance``.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk

from gateway import imaging
from gateway.config import GatewayConfig, RuleConfig
from gateway.contour import rtstruct
from gateway.contour.reader import rasterize_rtstruct
from gateway.contour.structures import plan_structures
from gateway.db.database import Store
from gateway.errors import GatewayError
from gateway.inference import ModelSlots, run_models, structure_set
from gateway.job import ModelState
from gateway.qa import cases as case_files
from gateway.qa.metrics import compare
from gateway.qa.pairing import match_rois
from gateway.qa.plots import OverlaySlice
from gateway.qa.report import (
    Report,
    ReportFiles,
    RoiRow,
    Verdict,
    judge_row,
    overall,
    summarise,
    write_report,
)
from gateway.receive.checks import check_dataset, check_encoding
from gateway.receive.receiver import describe_instance
from gateway.segment import SegmenterCache
from gateway.study import assembly

log = logging.getLogger(__name__)

CALLING_AE = "VALIDATE"


@dataclass
class CaseResult:
    """One case: its rows (one per ROI of the model), or why it could not be scored."""

    label: str
    study_uid: str = ""
    rows: list[RoiRow] = field(default_factory=list)
    error: str = ""  # refused by the assembly, failed model, unusable truth
    sop_instance_uids: list[str] = field(default_factory=list)
    truth_files: list[Path] = field(default_factory=list)
    overlays: dict[str, OverlaySlice] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class ValidationResult:
    verdict: Verdict
    report: Report
    files: ReportFiles
    cases: list[CaseResult]
    seconds: float


class _Context:
    """What every case shares: config, model, the pseudo-rule, the segmenters, a database."""

    def __init__(
        self, cfg: GatewayConfig, model: str, out_dir: Path, store: Store, rtstruct_dir: Path
    ):
        self.cfg = cfg
        self.model = cfg.models[model]
        self.rule = RuleConfig(name="validate", models=(model,), destinations=("none",))
        self.segmenters = SegmenterCache(cfg.segmentation)
        self.slots = ModelSlots()
        self.out_dir = out_dir
        self.store = store
        self.rtstruct_dir = rtstruct_dir  # the RTSTRUCTs made (they hold patient data)


def _plain(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _identity_words(datasets: Sequence[pydicom.Dataset]) -> set[str]:
    words: set[str] = set()
    for ds in datasets:
        for kw in ("PatientID", "PatientName", "PatientBirthDate", "OtherPatientIDs"):
            value = str(ds.get(kw, "") or "")
            parts = [value, *re.split(r"[\^\s,\\=]+", value)]
            words.update(w for w in map(_plain, parts) if len(w) >= 3)
    return words


def case_label(folder: Path, index: int, datasets: Sequence[pydicom.Dataset]) -> str:
    """The folder's name, unless it holds the patient's name, ID or birth date (compared
    without case or punctuation): then ``case-<index>`` (the report never shows patient data)."""
    name = _plain(folder.name)
    if any(w in name for w in _identity_words(datasets)):
        return f"case-{index:03d}"
    return folder.name


def _run_case(ctx: _Context, index: int, folder: Path) -> CaseResult:
    t0 = time.perf_counter()
    files = case_files.scan(folder)
    datasets = [ds for _, ds in files.instances]
    result = CaseResult(case_label(folder, index, datasets), truth_files=files.truth_files)
    try:
        _score(ctx, files, result)
    except (GatewayError, case_files.TruthError, ValueError) as exc:
        result.error = str(exc)
    except Exception as exc:  # one odd case must not end the run: reported like a failed job
        log.exception("case %s: unexpected error", result.label)
        result.error = f"internal error: {type(exc).__name__}: {exc}"
    result.seconds = round(time.perf_counter() - t0, 2)
    if result.error:
        # Every ROI of the model gets its row, so the CSV lists each case the set holds.
        result.rows = [
            RoiRow(
                case=result.label,
                study_uid=result.study_uid,
                model=ctx.model.name,
                model_version=ctx.model.version,
                roi=p.roi.name,
                reference_roi="",
                status="not run",
                note=result.error,
            )
            for p in plan_structures(ctx.rule, ctx.cfg.models, ctx.cfg.roi_names)
        ]
        log.warning("case %s: %s", result.label, result.error)
    else:
        log.info("case %s: %d ROIs in %.1f s", result.label, len(result.rows), result.seconds)
    return result


def _score(ctx: _Context, files: case_files.CaseFiles, result: CaseResult) -> None:
    cfg, store = ctx.cfg, ctx.store
    if not files.instances:
        raise ValueError("no DICOM image found")
    records = []
    for path, ds in files.instances:
        check_encoding(ds)
        rec = describe_instance(ds, str(path), salt=store.patient_salt)
        check_dataset(ds, rec.sop_class_uid, str(ds.file_meta.get("TransferSyntaxUID", "")))
        records.append(rec)
    studies = {r.study_uid for r in records}
    if len(studies) != 1:
        raise ValueError(f"the case holds {len(studies)} studies: one study per case")
    result.study_uid = studies.pop()
    result.sop_instance_uids = [r.sop_instance_uid for r in records]
    received = time.time()
    for rec in records:
        store.record_instance(rec, CALLING_AE, cfg.ae_title, now=received)
    study = store.study(result.study_uid)
    assert study is not None
    # All sent, association released, quiet long enough: what remains is the model's decision.
    now = received + cfg.assembly.series_quiet_s + 1.0
    decision = assembly.decide_rule([ctx.model], study, opened_at=now, now=now, cfg=cfg.assembly)
    if decision.waiting is not None:
        raise ValueError(f"refused: {decision.waiting.reason}")
    if decision.failed:
        raise ValueError("refused: " + "; ".join(decision.failed.values()))
    series = {s.key: s for s in study.series}
    runnable = {ctx.model.name: tuple(s.key for s in decision.ready[ctx.model.name].series)}

    def read(uid: str) -> imaging.Volume:
        return imaging.read_image_set(series[uid])

    run = run_models(runnable, cfg.models, read, ctx.segmenters, ctx.slots)
    outcome = run.outcomes[ctx.model.name]
    if outcome.state is not ModelState.DONE or run.reference is None:
        raise ValueError(f"model failed: {outcome.reason}")
    structures, ds = structure_set(cfg, ctx.rule, run, runnable)
    written = ctx.rtstruct_dir / f"{result.label}.dcm"
    rtstruct.write_dataset(ds, written)
    reference = run.reference
    ai_masks = rasterize_rtstruct(pydicom.dcmread(written), reference)
    truth = case_files.read_truth(files, reference)
    image = sitk.GetArrayFromImage(reference.image)
    spacing = tuple(reversed(reference.image.GetSpacing()))
    names = [st.roi.name for st in structures]
    pairs = match_rois(names, list(truth), cfg.roi_names).pairs
    date = str(reference.datasets[0].get("StudyDate", ""))
    for name in names:
        ai = ai_masks.get(name, np.zeros(image.shape, dtype=bool))
        common: dict[str, Any] = {
            "case": result.label,
            "study_uid": result.study_uid,
            "model": ctx.model.name,
            "model_version": ctx.model.version,
            "roi": name,
            "date": date,
        }
        if name not in pairs:
            result.rows.append(RoiRow(reference_roi="", status="no reference", **common))
            continue
        ref = truth[pairs[name]]
        metrics = compare(
            ai,
            ref,
            spacing,
            tolerance_mm=cfg.qa.tolerance_for(name),
            apl_tolerance_mm=cfg.qa.apl_tolerance_mm,
        )
        row = RoiRow.of(metrics, reference_roi=pairs[name], **common)
        result.rows.append(dataclasses.replace(row, passed=judge_row(row, ctx.model.qa)))
        result.overlays[name] = _overlay(image, ref, ai, spacing)


def _overlay(
    image: np.ndarray, ref: np.ndarray, ai: np.ndarray, spacing: Sequence[float]
) -> OverlaySlice:
    slices = np.flatnonzero((ref | ai).any(axis=(1, 2)))
    k = int(slices[len(slices) // 2]) if len(slices) else image.shape[0] // 2
    return OverlaySlice(image[k].copy(), ref[k].copy(), ai[k].copy(), (spacing[1], spacing[2]), k)


def validate(
    cfg: GatewayConfig,
    model_name: str,
    cases_dir: Path,
    out_dir: Path,
    *,
    keep_rtstruct: bool = False,
) -> ValidationResult:
    """Run ``model_name`` on every case under ``cases_dir`` and write the report into
    ``out_dir`` (``validation.html``, ``validation.csv``, ``validation-summary.csv``; with
    ``keep_rtstruct`` also the RTSTRUCTs made, under ``rtstruct/``: DICOM objects that carry
    the cases' patient data, unlike the report). Raises ValueError for an unknown model or no
    cases."""
    t0 = time.perf_counter()
    if model_name not in cfg.models:
        raise ValueError(f"unknown model '{model_name}' (known: {', '.join(sorted(cfg.models))})")
    folders = case_files.find_cases(cases_dir)
    if not folders:
        raise ValueError(f"no case folder under {cases_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aircon-validate-") as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'validate.db'}")
        made = out_dir / "rtstruct" if keep_rtstruct else Path(tmp) / "rtstruct"
        ctx = _Context(cfg, model_name, out_dir, store, made)
        results = [_run_case(ctx, i, f) for i, f in enumerate(folders, start=1)]
        store.engine.dispose()
    spec = ctx.model
    rows = [r for c in results for r in c.rows]
    summaries = summarise(rows, {spec.name: spec.qa})
    failed = [c for c in results if c.error]
    verdict = overall(summaries, failed_cases=len(failed))
    uids = [u for c in results for u in c.sop_instance_uids]
    truth = [p for c in results for p in c.truth_files]
    report = Report(
        title=f"AIRCON validation report: {spec.name} {spec.version}",
        kind="validation",
        reference="truth",
        provenance=[
            ("Model", f"{spec.name} {spec.version}"),
            ("Weights SHA-256", spec.weights_sha256 or "none (no weight files)"),
            ("AIRCON version", rtstruct.gateway_version()),
            ("Date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")),
            ("Cases", f"{len(results)} ({len(failed)} not scored)"),
            ("Images", str(len(uids))),
            ("Data set fingerprint (SHA-256)", case_files.fingerprint(uids, truth)),
            (
                "Tolerances",
                f"surface Dice {cfg.qa.tolerance_mm:g} mm"
                + "".join(f", {k} {v:g} mm" for k, v in cfg.qa.roi_tolerance_mm.items())
                + f"; added path length {cfg.qa.apl_tolerance_mm:g} mm",
            ),
        ],
        rows=rows,
        summaries=summaries,
        verdict=verdict,
        notes=[f"{c.label}: {c.error}" for c in failed],
        overlays={(c.label, roi): ov for c in results for roi, ov in c.overlays.items()},
    )
    files = write_report(report, out_dir, "validation")
    seconds = round(time.perf_counter() - t0, 1)
    log.info("validation of %s: %s in %.1f s (%s)", spec.name, verdict.value, seconds, files.html)
    return ValidationResult(verdict, report, files, results, seconds)


def main(
    cfg: GatewayConfig,
    model: str,
    cases: Path,
    out: Path | None = None,
    *,
    keep_rtstruct: bool = False,
) -> int:
    """``aircon validate``: 0 when every ROI passes, 1 when one fails, a case could not be
    scored or no thresholds are set, 2 on an error (unknown model, no cases)."""
    out = out or Path(f"validation-{model}-{datetime.date.today():%Y%m%d}")
    try:
        result = validate(cfg, model, cases, out, keep_rtstruct=keep_rtstruct)
    except (ValueError, OSError) as exc:
        log.error("validation failed: %s", exc)
        print(f"error: {exc}")
        return 2
    print(f"{result.verdict.value.upper()}: {result.files.html}")
    for s in result.report.summaries:
        dice = s.stats["dice"]
        shown = f"median Dice {dice[1]:.3f}" if dice else "not scored"
        print(f"  {s.roi}: {s.verdict.value} ({s.scored}/{s.cases} cases, {shown})")
    for note in result.report.notes:
        print(f"  {note}")
    baseline = suggested_baseline(result.report.rows)
    if baseline:
        path = result.files.html.parent / "baseline.yaml"
        path.write_text(baseline, encoding="utf-8")
        print(f"  control-chart baseline from these cases (model.yaml qa.baseline): {path}")
    return 0 if result.verdict is Verdict.PASS else 1


def suggested_baseline(rows: Sequence[Any]) -> str:
    """A model.yaml ``qa:`` block with each ROI's mean and sample SD of surface Dice and APL
    over the scored cases (at least 3), for the control charts to start from instead of the
    first clinical cases (docs/qa-drift.md). "" when no ROI has 3 scored cases."""
    import statistics

    import yaml

    by_roi: dict[str, list[Any]] = {}
    for r in rows:
        if r.surface_dice is not None and r.apl is not None:
            by_roi.setdefault(r.roi, []).append(r)
    baseline = {}
    for roi, scored in sorted(by_roi.items()):
        if len(scored) < 3:
            continue
        entry = {}
        for key, attr in (("surface_dice", "surface_dice"), ("apl_mm", "apl")):
            values = [float(getattr(r, attr)) for r in scored]
            entry[key] = [round(statistics.fmean(values), 4), round(statistics.stdev(values), 4)]
        baseline[roi] = entry
    if not baseline:
        return ""
    head = "# From aircon validate: paste under the model's qa: in model.yaml after review.\n"
    return head + yaml.safe_dump({"qa": {"baseline": baseline}}, sort_keys=False)
