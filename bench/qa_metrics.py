"""Benchmark: time of one QA metric comparison (gateway.qa.metrics.compare) per ROI pair.

Grids: the ProstateX T2 grid (384 x 384 x 19, 3.6 x 0.5 x 0.5 mm) with a prostate-sized (~40 ml)
and a bladder-sized (~250 ml) ROI, and a CT-sized grid (512 x 512 x 200, 2.5 x 0.98 x 0.98 mm)
with prostate, bladder and a large (~1500 ml) ROI. Each ROI is an ellipsoid; the "approved" one
is the same ellipsoid grown by 2 mm in-plane and shifted 1 mm, so every metric has work to do
(no early exit for identical masks). Prints the median of ``--rounds`` runs per pair.

Run: ``python bench/qa_metrics.py [--rounds 5]``. Reports the machine's CPU count.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from gateway.qa.metrics import compare  # noqa: E402

# (name, shape (z, y, x), spacing (z, y, x) mm, [(ROI, semi-axes (z, y, x) mm)])
CASES = [
    (
        "ProstateX T2",
        (19, 384, 384),
        (3.6, 0.5, 0.5),
        [("prostate", (19.0, 21.0, 24.0)), ("bladder", (30.0, 42.0, 48.0))],
    ),
    (
        "CT",
        (200, 512, 512),
        (2.5, 0.98, 0.98),
        [
            ("prostate", (19.0, 21.0, 24.0)),
            ("bladder", (34.0, 40.0, 44.0)),
            ("large", (60.0, 75.0, 80.0)),
        ],
    ),
]


def ellipsoid(shape, spacing, semi, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    axes = [
        ((np.arange(n) - (n - 1) / 2) * s - d) / r
        for n, s, r, d in zip(shape, spacing, semi, shift, strict=True)
    ]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    return z * z + y * y + x * x <= 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"CPU cores: {os.cpu_count()}; rounds {args.rounds} (median)")
    print(f"{'grid':<14}{'ROI':<10}{'AI ml':>8}{'appr. ml':>10}{'s / pair':>10}  metrics")
    for grid, shape, spacing, rois in CASES:
        for roi, semi in rois:
            ai = ellipsoid(shape, spacing, semi)
            grown = (semi[0], semi[1] + 2.0, semi[2] + 2.0)
            approved = ellipsoid(shape, spacing, grown, shift=(0.0, 1.0, 0.0))
            times = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                m = compare(ai, approved, spacing)
                times.append(time.perf_counter() - t)
            analytic = 4 / 3 * math.pi * math.prod(semi) / 1000
            print(
                f"{grid:<14}{roi:<10}{m.volume_ai:>8.1f}{m.volume_approved:>10.1f}"
                f"{statistics.median(times):>10.3f}  dice {m.dice:.3f} hd {m.hd:.2f} "
                f"hd95 {m.hd95:.2f} msd {m.msd:.2f} sdice {m.surface_dice:.3f} "
                f"apl {m.apl:.0f} mm (analytic AI volume {analytic:.1f} ml)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
