"""Synthetic pelvis phantoms: repeatable, anatomically plausible, really oblique."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from gateway.demo.phantom import BLADDER, PROSTATE, RECTUM, dice_scores, make_phantom

SEEDS = (0, 7, 123)


def _arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    ph = make_phantom(seed)
    return sitk.GetArrayFromImage(ph.image), sitk.GetArrayFromImage(ph.labels)


def _centroid_mm(labels: sitk.Image, value: int) -> np.ndarray:
    """Centroid of a label in patient coordinates (x L, y P, z S)."""
    idx = np.argwhere(sitk.GetArrayFromImage(labels) == value)[:, ::-1].astype(float)
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    pts = np.array(labels.GetOrigin()) + (idx * labels.GetSpacing()) @ direction.T
    return pts.mean(axis=0)


def test_same_seed_gives_identical_phantom() -> None:
    a, b = make_phantom(5), make_phantom(5)
    assert np.array_equal(sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(b.image))
    assert np.array_equal(sitk.GetArrayFromImage(a.labels), sitk.GetArrayFromImage(b.labels))
    assert a.image.GetDirection() == b.image.GetDirection()
    assert a.image.GetOrigin() == b.image.GetOrigin()


def test_different_seeds_give_different_anatomy() -> None:
    (_, la), (_, lb) = _arrays(1), _arrays(2)
    assert dice_scores(la, lb)[PROSTATE] < 0.95


def test_image_and_labels_share_the_requested_grid() -> None:
    ph = make_phantom(0, shape=(20, 80, 72), spacing=(3.5, 1.5, 1.25))
    for img in (ph.image, ph.labels):
        assert img.GetSize() == (72, 80, 20)
        assert img.GetSpacing() == pytest.approx((1.25, 1.5, 3.5))
    assert ph.image.GetPixelID() == sitk.sitkFloat32
    assert ph.labels.GetPixelID() == sitk.sitkUInt8
    assert ph.image.GetOrigin() == ph.labels.GetOrigin()
    assert ph.image.GetDirection() == ph.labels.GetDirection()


@pytest.mark.parametrize("seed", SEEDS)
def test_organ_volumes_are_plausible(seed: int) -> None:
    ph = make_phantom(seed)
    labels = sitk.GetArrayFromImage(ph.labels)
    cc = float(np.prod(ph.labels.GetSpacing())) / 1000.0
    assert set(np.unique(labels)) == {0, PROSTATE, BLADDER, RECTUM}
    assert 20 <= (labels == PROSTATE).sum() * cc <= 60
    assert 15 <= (labels == BLADDER).sum() * cc <= 250
    assert 10 <= (labels == RECTUM).sum() * cc <= 120
    # The prostate lies wholly inside the slab, so its volume is the organ's, not a cut.
    assert not (labels[[0, -1]] == PROSTATE).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_organs_are_where_anatomy_puts_them(seed: int) -> None:
    labels = make_phantom(seed).labels
    prostate, bladder, rectum = (_centroid_mm(labels, v) for v in (PROSTATE, BLADDER, RECTUM))
    assert bladder[2] > prostate[2] + 10, "bladder superior to the prostate"
    assert bladder[1] < prostate[1], "bladder anterior (smaller LPS y) to the prostate"
    assert rectum[1] > prostate[1] + 15, "rectum posterior to the prostate"


@pytest.mark.parametrize("seed", SEEDS)
def test_t2_contrast(seed: int) -> None:
    image, labels = _arrays(seed)
    mean = {v: image[labels == v].mean() for v in (PROSTATE, BLADDER)}
    assert mean[BLADDER] > 1.4 * mean[PROSTATE], "urine is bright on T2"
    assert image.min() >= 0 and image.max() <= 4095
    assert np.array_equal(image, np.rint(image)), "scanner-like integer values"
    corner = image[:, :4, :4]
    assert 0 < corner.mean() < 0.1 * mean[BLADDER], "air outside the body is dark but noisy"


@pytest.mark.parametrize("seed", SEEDS)
def test_grid_is_oblique_but_proper(seed: int) -> None:
    ph = make_phantom(seed, max_oblique_deg=6.0)
    d = np.array(ph.image.GetDirection()).reshape(3, 3)
    assert np.allclose(d.T @ d, np.eye(3), atol=1e-9)
    assert np.linalg.det(d) == pytest.approx(1.0)
    tilt = np.degrees(np.arccos(np.clip(np.diag(d), -1, 1)))
    assert 0.1 < tilt.max() < 12.0
    assert np.all(np.abs(ph.image.GetOrigin()) < 300)


def test_no_obliquity_when_asked() -> None:
    d = make_phantom(3, max_oblique_deg=0.0).image.GetDirection()
    assert np.allclose(d, np.eye(3).ravel())


def test_dice_scores() -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    a[1:3, 1:3, 1:3] = PROSTATE
    b = a.copy()
    b[1, 1:3, 1:3] = 0
    scores = dice_scores(a, b)
    assert scores[PROSTATE] == pytest.approx(2 * 4 / (8 + 4))
    assert scores[BLADDER] == 1.0, "absent from both counts as agreement"
    with pytest.raises(ValueError):
        dice_scores(a, b[:2])
