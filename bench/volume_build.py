"""Benchmark: building a volume from one multi-frame instance vs from the same slices as a
classic series (``gateway.imaging.read_series``).

Sizes: 19 frames, the real ProstateX-0000 T2 axial (384 x 384, 16-bit); 200 frames, a synthetic
phantom (``gateway.demo.phantom.make_phantom``, 200 x ``--rows`` x ``--rows``, 1 mm). Each is
written once as a classic MR series (one file per slice) and as ONE Enhanced MR instance of
the same stored pixels (``tests.multiframe.enhanced_mr``, one channel), in a temporary folder.
Then ``read_series(classic_paths)`` and ``read_series([multiframe_path])`` are each timed
``--rounds`` times after one warm-up (the files are in the page cache), median reported, with
``ratio multi-frame/classic`` per size and whether both volumes hold the same voxels on the
same grid. Where ``read_series`` refuses a multi-frame instance (before issue 13's reader), the
bench says so and reports the classic time alone.

Run: ``python bench/volume_build.py [--rounds 5] [--rows 256]``. Reports the machine's CPU
count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from gateway.demo.phantom import make_phantom, write_dicom_series  # noqa: E402
from gateway.grid import Grid  # noqa: E402
from gateway.imaging import read_series  # noqa: E402
from tests.multiframe import enhanced_mr  # noqa: E402

PROSTATEX_T2 = REPO.parent / "shared" / "data" / "prostatex" / "ProstateX-0000" / "07-07-2011"
PROSTATEX_T2 = PROSTATEX_T2 / "4.000000-t2tsetra-00702"
BUNDLED_T2 = REPO / "demo-data" / "ProstateX-0000-T2"


def timed(fn: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """Median seconds of ``rounds`` calls after one warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def same_volume(a: sitk.Image, b: sitk.Image) -> bool:
    return Grid.of(a).matches(b) and np.array_equal(
        sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    )


def bench(label: str, classic: list[Path], multiframe: Path, rounds: int) -> None:
    classic_s, classic_volume = timed(lambda: read_series(classic), rounds)
    size = "x".join(str(n) for n in classic_volume.image.GetSize())
    mb = multiframe.stat().st_size / 1e6
    try:
        multi_s, multi_volume = timed(lambda: read_series([multiframe]), rounds)
    except Exception as exc:  # the bench reports whatever the reader raises
        print(f"{label:<24}{size:<14}{classic_s * 1000:>12.1f}{'-':>16}{'-':>8}  ({mb:.0f} MB)")
        print(
            f"  read_series([multi-frame]) raised {type(exc).__name__}: {str(exc)[:160]}\n"
            "  (a gateway without issue 13's multi-frame reader refuses multi-frame instances)\n"
            "  ratio multi-frame/classic: none"
        )
        return
    same = "yes" if same_volume(classic_volume.image, multi_volume.image) else "NO"
    print(
        f"{label:<24}{size:<14}{classic_s * 1000:>12.1f}{multi_s * 1000:>16.1f}"
        f"{multi_s / classic_s:>8.2f}  ({mb:.0f} MB; same voxels and grid: {same})\n"
        f"  ratio multi-frame/classic {multi_s / classic_s:.2f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=256, help="rows = columns of the 200-frame case")
    args = ap.parse_args()
    t2_dir = PROSTATEX_T2 if PROSTATEX_T2.is_dir() else BUNDLED_T2
    t2 = sorted(t2_dir.glob("*.dcm"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t2_multi = enhanced_mr([t2], out / "t2_enhanced.dcm", contrast="T2").path
        t = time.perf_counter()
        phantom = make_phantom(200, shape=(200, args.rows, args.rows), spacing=(1.0, 1.0, 1.0))
        big = list(write_dicom_series(phantom, out / "classic200", seed=200).files)
        big_multi = enhanced_mr([big], out / "big_enhanced.dcm").path
        print(f"made the 200-slice phantom and its files in {time.perf_counter() - t:.0f} s")
        print(f"CPU cores: {os.cpu_count()}; rounds {args.rounds} (median, after one warm-up)")
        print(
            f"{'case':<24}{'size':<14}{'classic ms':>12}{'multi-frame ms':>16}"
            f"{'ratio':>8}  (multi-frame/classic)"
        )
        bench(f"ProstateX T2 ({len(t2)} fr)", t2, t2_multi, args.rounds)
        bench(f"phantom ({len(big)} fr)", big, big_multi, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
