"""The contour preview: a synthetic volume and masks in, a PNG out whose ROI colours are where
the contours are."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import Dataset

from gateway.contour.preview import DPI, PreviewRoi, layout, preview_slices, render
from gateway.imaging import Volume
from gateway.inference import write_preview

RED, YELLOW = (255, 0, 0), (255, 255, 0)


def _box(shape: tuple[int, int, int], z: slice, y: slice, x: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[z, y, x] = True
    return mask


def _near(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.all(np.abs(rgb.astype(int) - np.array(colour)) <= tol, axis=-1)


def test_one_slice_preview_has_the_roi_colours_where_the_contours_are() -> None:
    shape = (6, 64, 64)
    image = np.zeros(shape, dtype=np.float32)  # black: the panel is the black area
    image[:, 0, 0] = 1.0  # something to window
    red = _box(shape, slice(3, 4), slice(8, 24), slice(8, 24))  # top left
    yellow = _box(shape, slice(3, 4), slice(40, 56), slice(36, 60))  # bottom right
    rois = [PreviewRoi("Prostate", RED, red), PreviewRoi("Bladder", YELLOW, yellow)]
    assert preview_slices(rois, shape[0]) == [3]

    png = render(image, (1.0, 1.0, 3.0), rois)

    picture = Image.open(io.BytesIO(png))
    _, width_in, height_in = layout(1, 2)
    assert picture.format == "PNG"
    assert picture.size == (round(width_in * DPI), round(height_in * DPI))
    rgb = np.asarray(picture.convert("RGB"))
    black = np.all(rgb < 20, axis=-1)  # the panel, and the text of the title and legend
    rows = np.flatnonzero(black.sum(axis=1) > 100)
    cols = np.flatnonzero(black.sum(axis=0) > 100)
    top, left = rows.min(), cols.min()
    size = (rows.max() - top + 1, cols.max() - left + 1)  # the 64 x 64 panel, in PNG pixels
    assert abs(size[0] - size[1]) <= 2

    def where(colour: tuple[int, int, int]) -> tuple[float, float, float, float]:
        """The colour's pixels inside the panel, as fractions of the panel: row and column
        span."""
        inside = np.zeros(rgb.shape[:2], dtype=bool)
        inside[top : top + size[0], left : left + size[1]] = True
        r, c = np.nonzero(_near(rgb, colour) & inside)
        assert r.size > 20, f"colour {colour} not drawn in the panel"
        return (
            (r.min() - top) / size[0],
            (r.max() - top) / size[0],
            (c.min() - left) / size[1],
            (c.max() - left) / size[1],
        )

    # The outline runs along the box's pixel edges: rows 8-24 of 64 are 0.125-0.375.
    for got, want in zip(where(RED), (8 / 64, 24 / 64, 8 / 64, 24 / 64), strict=True):
        assert abs(got - want) < 0.03
    for got, want in zip(where(YELLOW), (40 / 64, 56 / 64, 36 / 64, 60 / 64), strict=True):
        assert abs(got - want) < 0.03
    # The legend below the panel carries the colours too.
    below = rgb[top + size[0] + 1 :]
    assert _near(below, RED).any() and _near(below, YELLOW).any()


def test_three_slices_through_the_largest_area_and_the_quarters_of_the_extent() -> None:
    shape = (20, 16, 16)
    small = _box(shape, slice(4, 13), slice(6, 8), slice(6, 8))  # z 4-12
    big = _box(shape, slice(9, 10), slice(2, 14), slice(2, 14))  # z 9: the largest area
    rois = [PreviewRoi("A", RED, small), PreviewRoi("B", YELLOW, big)]
    assert preview_slices(rois, 20) == [6, 9, 10]  # 4 + 8/4, the largest, 4 + 3 * 8/4
    png = render(np.random.default_rng(1).random(shape, dtype=np.float32), (1, 1, 3), rois)
    _, width_in, height_in = layout(3, 2)
    assert Image.open(io.BytesIO(png)).size == (round(width_in * DPI), round(height_in * DPI))
    assert preview_slices([PreviewRoi("empty", RED, np.zeros(shape, bool))], 20) == [10]


def test_a_preview_that_cannot_be_made_is_none_and_never_raises(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.ones((4, 8, 8), dtype=np.float32))
    volume = Volume(image=image, datasets=(Dataset(),) * 4)

    class Bad:  # a structure whose mask is not on the volume's grid
        mask = np.ones((3, 8, 8), dtype=bool)

        class roi:  # noqa: N801
            name, color = "Bad", RED

    assert write_preview(volume, [Bad()], tmp_path / "p.png") is None  # type: ignore[list-item]
    assert not (tmp_path / "p.png").exists()
