"""Benchmark: per-model warm inference time, and what resampling and merging add.

For each model (pelvis-demo, pelvis-dixon-demo, taps) on the real ProstateX-0000 T2 axial and
on a four-series phantom study: load and warm the model once, then time ``predict`` over
``--rounds`` runs (median). Separately: the time to resample the Dixon water series onto the T2
grid (what the two-channel model costs beyond the one-channel one before inference), and the
time to build one merged structure set (pelvis-demo + TAPS) against one single-model set.

Run: ``python bench/models.py [--rounds 2] [--skip-taps]``. Reports the machine's CPU count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from gateway.config import RtstructConfig, SegmentationConfig  # noqa: E402
from gateway.contour import rtstruct  # noqa: E402
from gateway.contour.structures import clinic_roi  # noqa: E402
from gateway.demo.phantom import make_study, write_study  # noqa: E402
from gateway.imaging import read_series, resample_to  # noqa: E402
from gateway.segment import Grid, make_segmenter  # noqa: E402
from gateway.segment.registry import load_model  # noqa: E402

PROSTATEX_T2 = REPO.parent / "shared" / "data" / "prostatex" / "ProstateX-0000" / "07-07-2011"
PROSTATEX_T2 = PROSTATEX_T2 / "4.000000-t2tsetra-00702"
BUNDLED_T2 = REPO / "demo-data" / "ProstateX-0000-T2"


def timed(fn: Any, rounds: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-taps", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cfg = SegmentationConfig(device="auto", threads=args.threads)
    t2_dir = PROSTATEX_T2 if PROSTATEX_T2.is_dir() else BUNDLED_T2
    prostatex = read_series(sorted(t2_dir.glob("*.dcm")))

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        study = make_study(4711)
        written = write_study(study, Path(tmp), seed=4711)
        t2 = read_series(list(written["t2"].files))
        water = read_series(list(written["water"].files))
        resample_s, water_on_t2 = timed(lambda: resample_to(water.image, t2.image), 5)

    cases = {
        "ProstateX T2 (384x384x19)": [prostatex.image],
        "phantom T2 (96x96x24)": [t2.image],
    }
    print(f"CPU cores: {os.cpu_count()}; threads {args.threads}; rounds {args.rounds}")
    print(f"resample Dixon water (80x80x22) onto the phantom T2 grid: {resample_s * 1000:.1f} ms")
    names = ["pelvis-demo", "pelvis-dixon-demo"] + ([] if args.skip_taps else ["taps"])
    label_maps: dict[tuple[str, str], np.ndarray] = {}
    print(f"{'model':<20}{'case':<28}{'load+warm s':>12}{'warm predict s':>16}")
    for name in names:
        folder = REPO / "models" / name
        if not (folder / "model.yaml").is_file():
            print(f"{name:<20}(not installed)")
            continue
        spec = load_model(folder)
        seg = make_segmenter(spec, cfg)
        t = time.perf_counter()
        seg.warm_up()
        warm_s = time.perf_counter() - t
        for case, images in cases.items():
            channels = [sitk.GetArrayFromImage(images[0])]
            if len(spec.inputs) == 2:
                if not case.startswith("phantom"):
                    continue  # ProstateX has no Dixon series
                channels.append(sitk.GetArrayFromImage(water_on_t2))
            grid = Grid.of(images[0])
            secs, out = timed(lambda c=channels, g=grid, s=seg: s.predict(c, g), args.rounds)
            label_maps[(name, case)] = out
            print(f"{name:<20}{case:<28}{warm_s:>12.1f}{secs:>16.2f}")
            warm_s = 0.0

    case = "ProstateX T2 (384x384x19)"
    if ("taps", case) in label_maps and ("pelvis-demo", case) in label_maps:
        cfg_rt = RtstructConfig()
        pelvis, taps = load_model(REPO / "models" / "pelvis-demo"), load_model(REPO / "models/taps")

        def structures(models: list[Any]) -> list[rtstruct.Structure]:
            out = []
            for spec in models:
                prov = rtstruct.Provenance(spec.name, spec.version, spec.weights_sha256)
                for value, label in spec.labels.items():
                    roi = clinic_roi(label, {})
                    if spec is pelvis and roi.name == "Prostate" and len(models) > 1:
                        continue  # taps wins the prostate
                    mask = label_maps[(spec.name, case)] == value
                    out.append(rtstruct.Structure(mask, roi, prov))
            return out

        uids = [prostatex.series_instance_uid]
        single_s, _ = timed(
            lambda: rtstruct.build_structure_set(
                prostatex, structures([pelvis]), cfg_rt, input_series_uids=uids
            ),
            3,
        )
        merged_s, _ = timed(
            lambda: rtstruct.build_structure_set(
                prostatex, structures([pelvis, taps]), cfg_rt, input_series_uids=uids
            ),
            3,
        )
        print(
            f"structure set on ProstateX: pelvis-demo alone {single_s:.2f} s, "
            f"merged pelvis-demo + taps {merged_s:.2f} s (+{merged_s - single_s:.2f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
