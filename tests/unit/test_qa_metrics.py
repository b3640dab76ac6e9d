"""The QA metrics against known answers: analytic shapes, known edits, empty ROIs, and three
independent implementations (medpy, DeepMind's surface-distance, MONAI). Definitions:
docs/qa-metrics.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from gateway.qa.metrics import compare

ANISO = (3.0, 0.5, 0.7)
GRIDS = [(1.0, 1.0, 1.0), ANISO, (2.5, 0.98, 0.98), (3.6, 0.5, 0.5)]


def ball(shape: tuple[int, ...], spacing: tuple[float, ...], radius: float) -> np.ndarray:
    """Voxels whose centre lies within ``radius`` mm of the grid's centre voxel."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    return z * z + y * y + x * x <= radius * radius


def sphere_pair(spacing, r, d):
    extent = 2 * (r + d) + 4 * max(spacing)
    shape = tuple(int(math.ceil(extent / s)) | 1 for s in spacing)  # odd: a centre voxel
    return ball(shape, spacing, r), ball(shape, spacing, r + d)


def ball_cm3(r: float) -> float:
    return 4 / 3 * math.pi * r**3 / 1000


# --- concentric spheres -------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", GRIDS)
@pytest.mark.parametrize(("r_slices", "d_slices"), [(5, 1), (4, 2), (6, 1)])
def test_concentric_spheres_hd_and_hd95_are_the_gap(spacing, r_slices, d_slices) -> None:
    # Radii on whole slices put both poles on voxel centres: the one place where the voxel-centre
    # border can be a whole slice away from the sphere. Then HD is d within half a voxel.
    r, d = r_slices * spacing[0], d_slices * spacing[0]
    m = compare(*sphere_pair(spacing, r, d), spacing)
    half = max(spacing) / 2
    assert abs(m.hd - d) <= half
    assert abs(m.hd95 - d) <= half
    assert m.hd95 <= m.hd


@pytest.mark.parametrize("spacing", GRIDS)
@pytest.mark.parametrize(("r", "d"), [(15.0, 3.0), (17.3, 2.2), (12.4, 5.1), (21.7, 6.6)])
def test_concentric_spheres_any_radii(spacing, r, d) -> None:
    # Radii off the lattice: along an axis the border voxel sits at the radius rounded down to
    # the lattice, and two such roundings differ from d by less than one spacing. Every border
    # voxel of a ball of radius R lies in the shell (R - s_max, R], which bounds HD from below.
    a, b = sphere_pair(spacing, r, d)
    m = compare(a, b, spacing)
    s_max = max(spacing)
    assert d - s_max < m.hd < d + s_max
    assert abs(m.hd95 - d) <= s_max / 2
    # Volumes: a voxel whose centre is in the ball lies in the ball of radius r + h (h the half
    # diagonal), and the ball of radius r - h is covered by such voxels: a hard sandwich.
    h = math.dist((0, 0, 0), spacing) / 2
    assert ball_cm3(r - h) <= m.volume_ai <= ball_cm3(r + h)
    assert ball_cm3(r + d - h) <= m.volume_approved <= ball_cm3(r + d + h)
    # The lattice-point count is much closer than the sandwich: measured <= 1.4 % on these
    # grids; 2 % leaves margin without hiding a wrong voxel volume (a factor, not a percent).
    assert m.volume_ai == pytest.approx(ball_cm3(r), rel=0.02)
    assert m.volume_approved == pytest.approx(ball_cm3(r + d), rel=0.02)
    # A inside B, so Dice = 2|A| / (|A| + |B|) exactly in counts, and near the analytic value.
    n_a, n_b = int(a.sum()), int(b.sum())
    assert m.dice == pytest.approx(2 * n_a / (n_a + n_b), abs=1e-12)
    assert m.dice == pytest.approx(2 * r**3 / (r**3 + (r + d) ** 3), abs=0.01)
    assert m.volume_change == pytest.approx((n_b - n_a) / n_a, rel=1e-12)


# --- a shifted box ------------------------------------------------------------------------------


def box(shape=(14, 40, 36), lo=(3, 8, 6), size=(6, 20, 18)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(o, o + n) for o, n in zip(lo, size, strict=True))] = True
    return m


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_shifted_box_dice_and_hd_exact(axis, k) -> None:
    a = box()
    b = np.roll(a, k, axis=axis)
    size = (6, 20, 18)[axis]
    m = compare(a, b, ANISO)
    assert m.dice == pytest.approx((size - k) / size, abs=1e-12)
    assert m.hd == pytest.approx(k * ANISO[axis], abs=1e-12)
    assert not m.unchanged
    assert m.volume_ai == m.volume_approved == pytest.approx(6 * 20 * 18 * 3.0 * 0.5 * 0.7 / 1000)
    assert m.volume_change == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_surface_dice_is_one_from_the_shift_on(axis) -> None:
    a = box()
    b = np.roll(a, 2, axis=axis)
    shift = 2 * ANISO[axis]
    assert compare(a, b, ANISO, tolerance_mm=shift).surface_dice == 1.0
    assert compare(a, b, ANISO, tolerance_mm=shift + 1.0).surface_dice == 1.0
    below = compare(a, b, ANISO, tolerance_mm=shift - 0.01).surface_dice
    assert below is not None and below < 1.0


# --- added path length --------------------------------------------------------------------------

PIX = (0.5, 0.7)  # (row, column) mm
SLAB = (3.0, *PIX)


def square(m: np.ndarray, z: int, n: int, centre=(30, 30)) -> None:
    r0, c0 = centre[0] - n // 2, centre[1] - n // 2
    m[z, r0 : r0 + n, c0 : c0 + n] = True


def contour_length(n: int) -> float:
    """The sub-pixel contour of an n x n pixel square: the sides run between the border pixels'
    outer edge midpoints ((n - 1) pixels each), the four corners are cut by a diagonal."""
    return 2 * (n - 1) * (PIX[0] + PIX[1]) + 4 * math.hypot(PIX[0] / 2, PIX[1] / 2)


def test_apl_is_zero_for_identical_masks() -> None:
    a = np.zeros((8, 60, 60), dtype=bool)
    for z in range(2, 6):
        square(a, z, 16)
    m = compare(a, a.copy(), SLAB)
    assert m.apl == 0.0 and m.unchanged and m.dice == 1.0 and m.hd == 0.0


def test_apl_of_a_square_grown_on_three_slices() -> None:
    n, g = 16, 3  # grown by 3 pixels each side: 1.5 / 2.1 mm > the 1 mm tolerance
    ai = np.zeros((8, 60, 60), dtype=bool)
    for z in range(1, 7):
        square(ai, z, n)
    approved = ai.copy()
    for z in (2, 3, 4):
        square(approved, z, n + 2 * g)
    m = compare(ai, approved, SLAB, apl_tolerance_mm=1.0)
    assert m.apl == pytest.approx(3 * contour_length(n + 2 * g), abs=1e-9)
    # Against the grown square's perimeter along the pixel edges: the corner cuts make the
    # sub-pixel contour shorter by (4 - 2*sqrt(2))/2 * (row + column spacing), ~1.17 pixel edges
    # per slice; within 1.2 of the longer pixel edge.
    perimeter = 2 * (n + 2 * g) * (PIX[0] + PIX[1])
    assert abs(m.apl - 3 * perimeter) <= 3 * 1.2 * max(PIX)


def test_apl_ignores_an_edit_within_tolerance() -> None:
    ai = np.zeros((6, 60, 60), dtype=bool)
    for z in range(1, 5):
        square(ai, z, 16)
    approved = ai.copy()
    square(approved, 2, 18)  # one pixel: 0.5 / 0.7 mm, corners 0.86 mm, all within 1 mm
    assert compare(ai, approved, SLAB, apl_tolerance_mm=1.0).apl == pytest.approx(0.0, abs=1e-12)
    assert compare(ai, approved, SLAB, apl_tolerance_mm=0.4).apl == pytest.approx(
        contour_length(18), abs=1e-9
    )


def test_apl_a_deleted_slice_adds_nothing_an_added_slice_its_whole_contour() -> None:
    ai = np.zeros((10, 60, 60), dtype=bool)
    for z in range(2, 8):
        square(ai, z, 16)
    deleted = ai.copy()
    deleted[7] = False
    assert compare(ai, deleted, SLAB).apl == 0.0
    added = ai.copy()
    square(added, 8, 12)
    assert compare(ai, added, SLAB).apl == pytest.approx(contour_length(12), abs=1e-9)


def test_apl_counts_the_contour_of_a_hole_the_clinician_cut() -> None:
    ai = np.zeros((5, 60, 60), dtype=bool)
    square(ai, 2, 30)
    approved = ai.copy()
    approved[2, 26:34, 26:34] = False  # an 8 x 8 hole, far (> 1 mm) from the outer contour
    assert compare(ai, approved, SLAB).apl == pytest.approx(
        2 * 7 * (PIX[0] + PIX[1]) + 4 * math.hypot(PIX[0] / 2, PIX[1] / 2), abs=1e-9
    )


# --- empty ROIs ---------------------------------------------------------------------------------


def test_both_empty() -> None:
    empty = np.zeros((4, 20, 20), dtype=bool)
    m = compare(empty, empty, SLAB)
    assert (m.dice, m.hd, m.hd95, m.msd, m.surface_dice, m.apl) == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert m.unchanged and m.volume_ai == m.volume_approved == 0.0 and m.volume_change is None


def test_ai_empty_the_whole_approved_contour_is_added() -> None:
    approved = np.zeros((6, 60, 60), dtype=bool)
    for z in (1, 2):
        square(approved, z, 10)
    m = compare(np.zeros_like(approved), approved, SLAB)
    assert (m.dice, m.hd, m.hd95, m.msd, m.surface_dice) == (0.0, None, None, None, 0.0)
    assert m.apl == pytest.approx(2 * contour_length(10), abs=1e-9)
    assert not m.unchanged and m.volume_ai == 0.0 and m.volume_change is None


def test_approved_empty_the_roi_was_emptied() -> None:
    ai = np.zeros((6, 60, 60), dtype=bool)
    square(ai, 2, 10)
    m = compare(ai, np.zeros_like(ai), SLAB)
    assert (m.dice, m.hd, m.hd95, m.msd, m.surface_dice, m.apl) == (0.0, None, None, None, 0.0, 0.0)
    assert m.volume_change == -1.0 and not m.unchanged


def test_contract_violations_are_errors() -> None:
    a = np.zeros((4, 20, 20), dtype=bool)
    with pytest.raises(ValueError):
        compare(a, np.zeros((4, 20, 21), dtype=bool), SLAB)
    with pytest.raises(ValueError):
        compare(a, a, (3.0, 0.5))
    with pytest.raises(ValueError):
        compare(a, a, (3.0, 0.0, 0.5))


# --- second implementations ---------------------------------------------------------------------


def blob_pair(seed: int, shape=(16, 64, 56)) -> tuple[np.ndarray, np.ndarray]:
    """Two irregular, overlapping, partly multi-component masks; one touches the array edge."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(1.5, 6, 6))
    other = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(1.5, 6, 6))
    a = field > 0.02
    b = (0.8 * field + 0.35 * other) > 0.02
    b[:, :, :3] = b[:, :, 3:6]  # to the x edge
    return a, b


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("spacing", [ANISO, (2.5, 0.98, 0.98)])
def test_agrees_with_medpy(seed, spacing) -> None:
    binary = pytest.importorskip("medpy.metric.binary")
    a, b = blob_pair(seed)
    m = compare(a, b, spacing)
    assert m.dice == pytest.approx(binary.dc(a, b), abs=1e-12)
    assert m.hd == pytest.approx(binary.hd(a, b, spacing), abs=1e-9)
    # medpy's hd95 is the percentile of both directions stacked (numpy's default 'linear')
    assert m.hd95 == pytest.approx(binary.hd95(a, b, spacing), abs=1e-9)
    # medpy 0.5.2's assd pools both directions (concatenate, then mean) as we do; earlier medpy
    # releases took the mean of the two directed means, a different number when the borders
    # differ in size. asd is one direction only.
    assert m.msd == pytest.approx(binary.assd(a, b, spacing), abs=1e-9)
    d_ab = getattr(binary, "__surface_distances")(a, b, spacing)
    d_ba = getattr(binary, "__surface_distances")(b, a, spacing)
    assert binary.asd(a, b, spacing) == pytest.approx(d_ab.mean(), abs=1e-12)
    assert d_ab.size != d_ba.size  # so the pooled and the two-means MSD do differ here
    assert m.msd != pytest.approx((d_ab.mean() + d_ba.mean()) / 2, abs=1e-9)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("tolerance", [1.0, 2.0, 3.0])
def test_surface_dice_close_to_deepmind_surfel_weighted(seed, tolerance) -> None:
    sd = pytest.importorskip("surface_distance")
    a, b = blob_pair(seed)
    m = compare(a, b, ANISO, tolerance_mm=tolerance)
    ref = sd.compute_surface_distances(a, b, ANISO)
    theirs = sd.compute_surface_dice_at_tolerance(ref, tolerance)
    # Theirs weights surfels (faces between voxel corners) by area; ours counts border voxels.
    # Measured: ours lower by 0 to 0.046 over 18 blob pairs on three grids at 1, 2 and 3 mm
    # (largest at 1 mm); 0.05 is the stated agreement.
    assert m.surface_dice == pytest.approx(theirs, abs=0.05)
    # Their surfel points are voxel corners, ours voxel centres, on both masks alike: the maxima
    # agree within half the finest spacing (measured <= 0.09 mm).
    assert m.hd == pytest.approx(sd.compute_robust_hausdorff(ref, 100), abs=min(ANISO) / 2)


@pytest.mark.parametrize("spacing", [ANISO, (1.0, 1.0, 1.0)])
def test_hd95_pools_both_directions_not_the_max_of_two_percentiles(spacing) -> None:
    # MONAI and surface-distance report max(P95(A->B), P95(B->A)): a larger number here.
    binary = pytest.importorskip("medpy.metric.binary")
    a, b = blob_pair(3)
    d_ab = getattr(binary, "__surface_distances")(a, b, spacing)
    d_ba = getattr(binary, "__surface_distances")(b, a, spacing)
    m = compare(a, b, spacing)
    assert m.hd95 == pytest.approx(np.percentile(np.concatenate([d_ab, d_ba]), 95), abs=1e-12)
    assert m.hd95 < max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)) - 0.5


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_agrees_with_monai_surface_dice_and_hd(seed) -> None:
    # MONAI (the taps extra) counts border voxels unweighted as we do: the same surface Dice up
    # to its float32 arithmetic. Its percentile HD is the max of the two directed percentiles.
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")
    a, b = blob_pair(seed)
    m = compare(a, b, ANISO, tolerance_mm=2.0)

    def onehot(mask: np.ndarray):
        t = torch.from_numpy(mask)[None, None].float()
        return torch.cat([1 - t, t], dim=1)

    pred, ref = onehot(a), onehot(b)
    sdice = metrics.compute_surface_dice(pred, ref, class_thresholds=[2.0], spacing=ANISO)
    assert m.surface_dice == pytest.approx(sdice.item(), abs=1e-6)
    assert m.hd == pytest.approx(
        metrics.compute_hausdorff_distance(pred, ref, spacing=ANISO).item()
    )
    hd95_monai = metrics.compute_hausdorff_distance(pred, ref, spacing=ANISO, percentile=95).item()
    assert m.hd95 <= hd95_monai
