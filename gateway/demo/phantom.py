"""Synthetic pelvis MR phantoms with known truth, and a writer for them as DICOM MR series.

The anatomy is drawn in patient space (DICOM LPS, mm): ``x`` towards the patient's left, ``y``
posterior, ``z`` superior. The image grid is slightly oblique (its Direction is a small random
rotation), so every voxel's physical position decides what it shows, exactly as on a scanner.

Intensities imitate an axial T2-weighted TSE in 12-bit scanner units (integer-valued floats):
bright fat and urine, an intermediate prostate with a brighter peripheral zone and texture, a
dark rectal wall around a lumen of gas or fluid, dark muscle and a body outline, a smooth
multiplicative bias field and Rician noise. Labels: 1 prostate, 2 bladder, 3 rectum.

Nothing here is anatomy from a person; the phantoms exist to test and demonstrate the gateway.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from gateway.grid import Grid, slice_normal

logger = logging.getLogger(__name__)

PROSTATE, BLADDER, RECTUM = 1, 2, 3
LABEL_NAMES = {PROSTATE: "Prostate", BLADDER: "Bladder", RECTUM: "Rectum"}

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; phantom UIDs are derived from it

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Phantom:
    """A phantom volume and its truth on the same grid.

    ``image`` is float32 (integer-valued, 0-4095), ``labels`` uint8 (0 background, 1 prostate,
    2 bladder, 3 rectum); both share origin, spacing and an oblique direction.
    """

    image: sitk.Image
    labels: sitk.Image
    seed: int


@dataclass(frozen=True)
class SeriesInfo:
    """What :func:`write_dicom_series` wrote: UIDs and one file per slice, in slice order."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]
    files: tuple[Path, ...]


# ---------------------------------------------------------------------------------------------
# Geometry


def _rotation(angles_deg: FloatArray) -> FloatArray:
    """Rotation matrix from angles (degrees) about x, then y, then z."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _grid(
    spacing_zyx: tuple[float, float, float], origin: FloatArray, direction: FloatArray
) -> Grid:
    return Grid(
        (spacing_zyx[2], spacing_zyx[1], spacing_zyx[0]),
        (float(origin[0]), float(origin[1]), float(origin[2])),
        tuple(float(v) for v in direction.ravel()),
    )


# ---------------------------------------------------------------------------------------------
# Shapes: each returns a normalised "radius" field r (inside where r < 1) and a scale in mm, so
# that (1 - r) * scale approximates the signed distance to the surface near it.


def _blob(
    points: FloatArray,
    centre: FloatArray,
    semi_axes: FloatArray,
    rot: FloatArray,
    rng: np.random.Generator,
    roughness: float,
) -> FloatArray:
    """A rotated ellipsoid whose surface is perturbed by a few low-frequency lobes."""
    local = (points - centre) @ rot / semi_axes
    r = np.linalg.norm(local, axis=-1)
    unit = local / np.maximum(r, 1e-6)[..., None]
    bump = np.zeros_like(r)
    for _ in range(3):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        freq = rng.uniform(1.0, 2.5)
        bump += rng.uniform(-roughness, roughness) * np.cos(freq * np.pi * (unit @ axis))
    return r / (1.0 + bump)


def _tube(
    points: FloatArray, centre: FloatArray, radius_xy: FloatArray, bend: float, tilt: FloatArray
) -> FloatArray:
    """An elliptic tube running cranio-caudally, bending posteriorly away from ``centre``."""
    dz = points[..., 2] - centre[2]
    cx = centre[0] + tilt[0] * dz
    cy = centre[1] + tilt[1] * dz + bend * dz**2
    return np.sqrt(
        ((points[..., 0] - cx) / radius_xy[0]) ** 2 + ((points[..., 1] - cy) / radius_xy[1]) ** 2
    )


def _soft(r: FloatArray, scale_mm: float, blur_mm: float = 0.8) -> FloatArray:
    """Partial-volume membership in [0, 1] of the region r < 1."""
    return 1.0 / (1.0 + np.exp(-np.clip((1.0 - r) * scale_mm / blur_mm, -40, 40)))


def _smooth_noise(
    shape: tuple[int, int, int], rng: np.random.Generator, sigma_vox: float
) -> FloatArray:
    """Zero-mean, unit-variance smooth random texture."""
    img = sitk.GetImageFromArray(rng.normal(size=shape).astype(np.float32))
    arr = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(img, sigma_vox)).astype(float)
    return (arr - arr.mean()) / max(arr.std(), 1e-6)


# ---------------------------------------------------------------------------------------------
# Phantom


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] = (24, 96, 96),
    spacing: tuple[float, float, float] = (3.0, 1.25, 1.25),
    max_oblique_deg: float = 6.0,
) -> Phantom:
    """Make one phantom; the same ``seed`` always gives the same phantom.

    ``shape`` and ``spacing`` are (z, y, x) in voxels and mm. The grid is rotated by up to
    ``max_oblique_deg`` about each patient axis and centred near the prostate. Each axis
    needs at least 4 voxels.
    """
    return _make(seed, shape, spacing, max_oblique_deg)[0]


def _make(
    seed: int,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    max_oblique_deg: float,
) -> tuple[Phantom, _Scene]:
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be three sizes of at least 4 voxels, got {shape}")
    rng = np.random.default_rng(seed)
    direction = _rotation(rng.uniform(-max_oblique_deg, max_oblique_deg, size=3))
    extent = np.array(
        [spacing[2] * (shape[2] - 1), spacing[1] * (shape[1] - 1), spacing[0] * (shape[0] - 1)]
    )
    # The slab is centred a little above the prostate so that the bladder base is in view.
    prostate_c = np.array([rng.uniform(-8, 8), rng.uniform(-15, 15), rng.uniform(-30, 10)])
    grid_centre = prostate_c + np.array(
        [rng.uniform(-4, 4), rng.uniform(-2, 6), rng.uniform(8, 14)]
    )
    grid = _grid(spacing, grid_centre - direction @ (extent / 2), direction)
    pts = grid.points(shape)

    # The anatomy's random draws do not depend on the grid: keep the generator's state so that
    # the same anatomy can be drawn again on another grid (the Dixon series of a study).
    scene = _Scene(prostate_c, grid_centre, rng.bit_generator.state)
    anatomy = _draw_anatomy(pts, prostate_c, rng)
    labels = _labels(anatomy)
    image = _t2_image(anatomy, pts, grid_centre, shape, rng)

    phantom = Phantom(
        image=grid.to_image(image.astype(np.float32)),
        labels=grid.to_image(labels.astype(np.uint8)),
        seed=seed,
    )
    return phantom, scene


@dataclass(frozen=True)
class _Scene:
    """What is needed to draw a phantom's anatomy again on another grid."""

    prostate_c: FloatArray
    grid_centre: FloatArray
    anatomy_rng_state: Mapping[str, Any]

    def anatomy_on(self, pts: FloatArray) -> _Anatomy:
        rng = np.random.default_rng()
        rng.bit_generator.state = dict(self.anatomy_rng_state)
        return _draw_anatomy(pts, self.prostate_c, rng)


# ---------------------------------------------------------------------------------------------
# A four-series study: T2 axial plus a Dixon acquisition on its own grid

DIXON_SHAPE = (22, 80, 80)  # z, y, x voxels
DIXON_SPACING = (3.5, 1.6, 1.6)  # z, y, x mm: other spacing, field of view and slices than T2


@dataclass(frozen=True)
class PhantomStudy:
    """One phantom patient imaged twice in one frame of reference, as a clinic acquires it.

    ``t2`` is the oblique T2 phantom with its truth (the grid a model runs on). ``dixon`` holds
    the ``water``, ``fat``, ``in_phase`` and ``out_phase`` images of a T1-weighted 3D Dixon scan
    on a true-axial grid with other spacing, field of view and slice positions; ``dixon_labels``
    is the truth on that grid.
    """

    t2: Phantom
    dixon: dict[str, sitk.Image]
    dixon_labels: sitk.Image


def make_study(seed: int) -> PhantomStudy:
    """The T2 phantom of ``seed`` (identical to :func:`make_phantom`) plus its Dixon images."""
    t2, scene = _make(seed, (24, 96, 96), (3.0, 1.25, 1.25), 6.0)
    rng = np.random.default_rng([seed, 0xD1C5])
    direction = _rotation(rng.uniform(-1.0, 1.0, size=3))  # planned true axial, near enough
    shape, spacing = DIXON_SHAPE, DIXON_SPACING
    extent = np.array(
        [spacing[2] * (shape[2] - 1), spacing[1] * (shape[1] - 1), spacing[0] * (shape[0] - 1)]
    )
    centre = scene.grid_centre + rng.uniform([-6, -6, -5], [6, 6, 5])
    grid = _grid(spacing, centre - direction @ (extent / 2), direction)
    pts = grid.points(shape)
    anatomy = scene.anatomy_on(pts)
    water, fat = _dixon_components(anatomy, pts, centre, shape, rng)
    images = {
        "water": water,
        "fat": fat,
        "in_phase": water + fat,
        "out_phase": np.abs(water - fat),
    }
    scale = rng.uniform(700, 1100)
    sigma = scale * rng.uniform(0.015, 0.025)
    out = {}
    for name, signal in images.items():
        s = np.clip(signal, 0, None) * scale
        noisy = np.sqrt((s + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
        arr = np.clip(np.rint(noisy), 0, 4095).astype(np.float32)
        out[name] = grid.to_image(arr)
    labels = grid.to_image(_labels(anatomy).astype(np.uint8))
    return PhantomStudy(t2=t2, dixon=out, dixon_labels=labels)


def _dixon_components(
    a: _Anatomy,
    pts: FloatArray,
    centre: FloatArray,
    shape: tuple[int, int, int],
    rng: np.random.Generator,
) -> tuple[FloatArray, FloatArray]:
    """Water and fat signal of a T1-weighted gradient-echo Dixon (relative units, 0-1).

    Fat is bright in the fat image and dark in the water image; urine is dark (long T1); muscle,
    prostate and rectal wall are intermediate in water with almost no fat.
    """
    body = a.soft("body")
    water = body * 0.06
    fat = body * rng.uniform(0.8, 0.95)

    def put(member: FloatArray, w: FloatArray | float, f: float) -> None:
        nonlocal water, fat
        water = water * (1 - member) + member * w
        fat = fat * (1 - member) + member * f

    muscle = rng.uniform(0.42, 0.5) * (1 + 0.05 * _smooth_noise(shape, rng, 1.0))
    put(a.soft("muscle") * body, muscle, 0.03)
    rect = a.soft("rectum")
    lum = a.soft("lumen")
    lumen_value = 0.0 if a.lumen_gas else rng.uniform(0.1, 0.2)
    put(rect, rng.uniform(0.36, 0.42) * (1 - lum) + lum * lumen_value, 0.02)
    bl = a.soft("bladder")
    urine_region = np.clip(
        _soft(a.fields["bladder"] * (1 + 2.0 / a.scales["bladder"]), a.scales["bladder"]), 0, 1
    )
    put(bl, urine_region * rng.uniform(0.1, 0.16) + (bl - urine_region).clip(0) * 0.4, 0.0)
    gland = rng.uniform(0.3, 0.36) * (1 + 0.06 * _smooth_noise(shape, rng, 1.5))
    put(a.soft("prostate"), gland, 0.02)
    bias = _bias_field(pts, centre, rng)
    return water * bias, fat * bias


@dataclass(frozen=True)
class _Anatomy:
    """Normalised radius fields (inside where < 1) and their mm scales."""

    fields: dict[str, FloatArray]
    scales: dict[str, float]
    lumen_gas: bool
    pz_axis: FloatArray
    prostate_c: FloatArray

    def soft(self, name: str) -> FloatArray:
        return _soft(self.fields[name], self.scales[name])

    def inside(self, name: str) -> NDArray[np.bool_]:
        return self.fields[name] < 1.0


def _draw_anatomy(pts: FloatArray, prostate_c: FloatArray, rng: np.random.Generator) -> _Anatomy:
    fields: dict[str, FloatArray] = {}
    scales: dict[str, float] = {}

    # Prostate: semi-axes ~ 18-26 (LR) x 13-19 (AP) x 15-22 (CC) mm -> ~16-45 cc before lobes.
    p_axes = np.array([rng.uniform(19, 26), rng.uniform(14, 19), rng.uniform(16, 22)])
    p_rot = _rotation(rng.uniform([-15, -5, -8], [5, 5, 8]))
    fields["prostate"] = _blob(pts, prostate_c, p_axes, p_rot, rng, 0.06)
    scales["prostate"] = float(p_axes.mean())

    # Bladder: above the prostate and anterior to it, variably filled.
    b_axes = np.array([rng.uniform(28, 40), rng.uniform(20, 30), rng.uniform(18, 28)])
    b_c = prostate_c + np.array(
        [rng.uniform(-5, 5), -rng.uniform(6, 14), p_axes[2] + b_axes[2] * rng.uniform(0.75, 0.95)]
    )
    fields["bladder"] = _blob(pts, b_c, b_axes, _rotation(rng.uniform(-10, 10, 3)), rng, 0.08)
    scales["bladder"] = float(b_axes.mean())

    # Rectum: a tube just behind the prostate, bending back as it rises.
    r_radius = np.array([rng.uniform(13, 19), rng.uniform(10, 14)])
    r_c = prostate_c + np.array(
        [rng.uniform(-4, 4), p_axes[1] + r_radius[1] + rng.uniform(1, 4), 0.0]
    )
    fields["rectum"] = _tube(
        pts, r_c, r_radius, rng.uniform(0.0, 0.006), rng.uniform(-0.08, 0.08, 2)
    )
    scales["rectum"] = float(r_radius.mean())
    wall = rng.uniform(2.5, 4.0)
    lumen = np.maximum(r_radius - wall, 1.0) * rng.uniform(0.3, 1.0)
    fields["lumen"] = (
        _tube(pts, r_c, lumen, 0.0, np.zeros(2))
        if lumen.min() > 1.5
        else np.full(pts.shape[:3], 9.0)
    )
    scales["lumen"] = float(lumen.mean())

    # Body outline and muscles (obturator internus either side, a gluteal/sacral band behind).
    # The band lies behind the rectum with a layer of mesorectal fat between them, as in a
    # patient: where the two touched, the rectum's posterior edge would be invisible.
    band_y = r_c[1] + r_radius[1] + rng.uniform(5, 9) + 9.0
    body_axes = np.array([rng.uniform(52, 58), rng.uniform(44, 50), 1e3])
    body_c = prostate_c + np.array([0.0, rng.uniform(2, 8), 0.0])
    body_axes[1] = max(body_axes[1], band_y + 12.0 - body_c[1])
    fields["body"] = _blob(pts, body_c, body_axes, np.eye(3), rng, 0.0)
    scales["body"] = 50.0
    side = np.zeros(pts.shape[:3]) + 9.0
    for sign in (-1.0, 1.0):
        c = prostate_c + np.array([sign * rng.uniform(36, 42), rng.uniform(-4, 6), 0.0])
        side = np.minimum(side, _blob(pts, c, np.array([8.0, 22.0, 1e3]), np.eye(3), rng, 0.0))
    fields["muscle"] = np.minimum(
        side,
        _blob(
            pts,
            np.array([body_c[0], band_y, body_c[2]]),
            np.array([40.0, 9.0, 1e3]),
            np.eye(3),
            rng,
            0.0,
        ),
    )
    scales["muscle"] = 10.0
    pz_axis = p_rot @ np.array([0.0, 1.0, 0.0])
    return _Anatomy(fields, scales, bool(rng.random() < 0.5), pz_axis, prostate_c)


def _labels(a: _Anatomy) -> NDArray[np.uint8]:
    """Hard labels; where shapes touch the later organ in (rectum, bladder, prostate) wins."""
    labels = np.zeros(a.fields["prostate"].shape, dtype=np.uint8)
    labels[a.inside("rectum")] = RECTUM
    labels[a.inside("bladder")] = BLADDER
    labels[a.inside("prostate")] = PROSTATE
    return labels


def _t2_image(
    a: _Anatomy,
    pts: FloatArray,
    grid_centre: FloatArray,
    shape: tuple[int, int, int],
    rng: np.random.Generator,
) -> FloatArray:
    """Blend tissue intensities by partial-volume membership, then bias field and noise."""
    fat, muscle, urine = rng.uniform(0.75, 0.9), rng.uniform(0.18, 0.26), rng.uniform(0.95, 1.05)
    body = a.soft("body")
    img = body * fat * (1.0 + 0.05 * _smooth_noise(shape, rng, 2.0))

    m = a.soft("muscle") * body
    img = img * (1 - m) + m * muscle * (1 + 0.08 * _smooth_noise(shape, rng, 1.0))

    rect = a.soft("rectum")
    lumen_value = rng.uniform(0.0, 0.05) if a.lumen_gas else rng.uniform(0.55, 0.8)
    lum = a.soft("lumen")
    rect_int = rng.uniform(0.12, 0.2) * (1 - lum) + lum * lumen_value
    img = img * (1 - rect) + rect * rect_int

    bl = a.soft("bladder")
    urine_region = np.clip(
        _soft(a.fields["bladder"] * (1 + 2.0 / a.scales["bladder"]), a.scales["bladder"]), 0, 1
    )
    bladder_int = urine_region * urine + (bl - urine_region).clip(0) * 0.2
    img = img * (1 - bl) + bladder_int

    pr = a.soft("prostate")
    # Peripheral zone: the posterior part of the gland, brighter; central gland darker, mottled.
    rel = (pts - a.prostate_c) @ a.pz_axis
    pz = 1.0 / (1.0 + np.exp(-(rel - 3.0) / 2.0))
    gland = (rng.uniform(0.3, 0.4) * (1 - pz) + rng.uniform(0.5, 0.62) * pz) * (
        1 + 0.12 * _smooth_noise(shape, rng, 1.2)
    )
    img = img * (1 - pr) + pr * gland

    bias = _bias_field(pts, grid_centre, rng)
    scale = rng.uniform(900, 1400)
    signal = np.clip(img, 0, None) * bias * scale
    sigma = scale * rng.uniform(0.02, 0.035)
    noisy = np.sqrt((signal + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    return np.clip(np.rint(noisy), 0, 4095)


def _bias_field(pts: FloatArray, centre: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Smooth multiplicative field, 1 at the centre, within about +-25 % over the slab."""
    rel = (pts - centre) / 60.0
    lin = rel @ rng.uniform(-0.15, 0.15, 3)
    quad = (rel**2) @ rng.uniform(-0.12, 0.06, 3)
    return np.exp(lin + quad)


# ---------------------------------------------------------------------------------------------
# DICOM


def _uid(rng: np.random.Generator) -> str:
    return _UID_ROOT + str(int(rng.integers(1, 2**62))) + "." + str(int(rng.integers(1, 2**40)))


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
        if len(text) <= 16:
            return "0" if text in ("-0", "") else text
    raise ValueError(f"cannot write {value} as a DICOM DS")


@dataclass(frozen=True)
class MRAcquisition:
    """Sequence attributes written into each instance of a series."""

    image_type: tuple[str, ...]
    scanning_sequence: str
    sequence_name: str
    acquisition_type: str
    repetition_time: float
    echo_time: float
    echo_train_length: int


T2_TSE = MRAcquisition(("ORIGINAL", "PRIMARY", "OTHER"), "SE", "tse2d1_25", "2D", 5000, 104, 25)


def _dixon(kind: str, echo_time: float) -> MRAcquisition:
    return MRAcquisition(
        ("DERIVED", "PRIMARY", "DIXON", kind), "GR", "*fl3d2", "3D", 7.0, echo_time, 1
    )


# Series of a phantom study as a clinic's scanner sends them: (number, description, image key,
# acquisition). The Dixon water image is derived from the in- and opposed-phase echoes.
STUDY_SERIES = (
    (4, "t2_tse_tra", "t2", T2_TSE),
    (5, "t1_vibe_dixon_tra_in", "in_phase", _dixon("IN_PHASE", 2.46)),
    (6, "t1_vibe_dixon_tra_opp", "out_phase", _dixon("OPP_PHASE", 1.23)),
    (7, "t1_vibe_dixon_tra_W", "water", _dixon("WATER", 2.46)),
)


def write_study(
    study: PhantomStudy,
    out_dir: Path,
    *,
    seed: int = 0,
    series: tuple[str, ...] = ("t2", "in_phase", "out_phase", "water"),
    patient_name: str = "PHANTOM^PELVIS",
    patient_id: str = "PHANTOM-0001",
) -> dict[str, SeriesInfo]:
    """Write the named series of ``study`` (keys of :data:`STUDY_SERIES`) into
    ``out_dir/<key>/``: one study, one frame of reference, one series each."""
    rng = np.random.default_rng([seed, 0x57D])
    study_uid, frame_uid = _uid(rng), _uid(rng)
    written = {}
    for number, description, key, acq in STUDY_SERIES:
        if key not in series:
            continue
        image = study.t2.image if key == "t2" else study.dixon[key]
        written[key] = write_dicom_series(
            image,
            out_dir / key,
            study_uid=study_uid,
            frame_of_reference_uid=frame_uid,
            series_description=description,
            series_number=number,
            patient_name=patient_name,
            patient_id=patient_id,
            seed=seed * 10 + number,
            acquisition=acq,
        )
    return written


def write_dicom_series(
    phantom: Phantom | sitk.Image,
    out_dir: Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "T2 TSE tra (phantom)",
    series_number: int = 4,
    patient_name: str = "PHANTOM^PELVIS",
    patient_id: str = "PHANTOM-0001",
    seed: int = 0,
    acquisition: MRAcquisition | None = None,
) -> SeriesInfo:
    """Write ``phantom.image`` (or an image) as an MR Image Storage series, one file per slice.

    Slice ``k`` of the array (z, y, x) becomes instance ``k + 1`` at
    ``origin + k * spacing_z * normal``, so a reader that sorts slices along
    ``cross(row, column)`` rebuilds the phantom's grid and values exactly. UIDs not given are
    derived from ``seed``; files are named ``MR_<instance>.dcm``. ``acquisition`` sets the
    sequence attributes (default: a 2D T2 TSE).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    rng = np.random.default_rng([seed, 0xD1C0])
    study_uid = study_uid or _uid(rng)
    series_uid = series_uid or _uid(rng)
    frame_of_reference_uid = frame_of_reference_uid or _uid(rng)
    out_dir.mkdir(parents=True, exist_ok=True)

    acq = acquisition or T2_TSE
    img = phantom.image if isinstance(phantom, Phantom) else phantom
    arr = sitk.GetArrayFromImage(img)
    stored, slope, intercept = _to_uint16(arr)
    direction = np.array(img.GetDirection()).reshape(3, 3)
    row, col, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    if not np.allclose(slice_normal((*row, *col)), normal, atol=1e-6):
        raise ValueError("image direction must be a proper rotation (normal = row x column)")
    sx, sy, sz = img.GetSpacing()
    origin = np.array(img.GetOrigin())
    now = datetime.datetime(2024, 1, 1, 9, 0, 0) + datetime.timedelta(minutes=seed % 1440)

    files: list[Path] = []
    sop_uids: list[str] = []
    for k in range(arr.shape[0]):
        sop_uid = _uid(rng)
        position = origin + k * sz * normal
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = list(acq.image_type)
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber = ""
        ds.Modality = "MR"
        ds.Manufacturer = "AIRCON phantom"
        ds.InstitutionName = "AIRCON"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Pelvis MR (phantom)"
        ds.SeriesDescription = series_description
        ds.ManufacturerModelName = "gateway.demo.phantom"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "M"
        ds.BodyPartExamined = "PROSTATE"
        ds.ScanningSequence = acq.scanning_sequence
        ds.SequenceVariant = ["SK", "SP"]
        ds.ScanOptions = ""
        ds.MRAcquisitionType = acq.acquisition_type
        ds.SequenceName = acq.sequence_name
        ds.AngioFlag = "N"
        ds.SliceThickness = _ds(sz)
        ds.RepetitionTime = _ds(acq.repetition_time)
        ds.EchoTime = _ds(acq.echo_time)
        ds.NumberOfAverages = "3"
        ds.ImagingFrequency = "123.2"
        ds.ImagedNucleus = "1H"
        ds.EchoNumbers = "1"
        ds.MagneticFieldStrength = "3"
        ds.SpacingBetweenSlices = _ds(sz)
        ds.EchoTrainLength = str(acq.echo_train_length)
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(position @ normal))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.BitsAllocated = 16
        ds.BitsStored = 16 if slope != 1.0 or intercept != 0.0 else 12
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        if slope != 1.0 or intercept != 0.0:
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(slope)
            ds.RescaleType = "US"
        ds.WindowCenter = "600"
        ds.WindowWidth = "1400"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(MR_IMAGE_STORAGE)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.preamble = b"\0" * 128

        path = out_dir / f"MR_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        sop_uids.append(sop_uid)
    logger.debug("wrote %d MR slices of series %s to %s", len(files), series_uid, out_dir)
    return SeriesInfo(study_uid, series_uid, frame_of_reference_uid, tuple(sop_uids), tuple(files))


def _to_uint16(arr: NDArray[np.floating]) -> tuple[NDArray[np.uint16], float, float]:
    """Stored values and (slope, intercept); identity when the values are integers 0-4095."""
    if np.all(arr >= 0) and np.all(arr <= 4095) and np.all(arr == np.rint(arr)):
        return arr.astype(np.uint16), 1.0, 0.0
    lo, hi = float(arr.min()), float(arr.max())
    slope = float(_ds((hi - lo) / 65535.0 if hi > lo else 1.0))
    intercept = float(_ds(lo))
    stored = np.clip(np.rint((arr - intercept) / slope), 0, 65535)
    return stored.astype(np.uint16), slope, intercept


def dice_scores(
    truth: NDArray[np.integer],
    predicted: NDArray[np.integer],
    labels: tuple[int, ...] = (PROSTATE, BLADDER, RECTUM),
) -> dict[int, float]:
    """Dice coefficient per label value; 1.0 where a label is absent from both."""
    if truth.shape != predicted.shape:
        raise ValueError(f"shapes differ: {truth.shape} vs {predicted.shape}")
    from gateway.contour.reader import dice

    return {label: dice(truth == label, predicted == label) for label in labels}
