"""The shared median filter against scipy.ndimage.median_filter, on every path it takes."""

import numpy as np
import pytest
from scipy import ndimage

from pipeline import jit
from pipeline.ops import filters
from pipeline.ops.filters import median_filter


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(100, 10, shape)).round(1).astype(np.float32)


@pytest.mark.parametrize("size", [3, 4, 9])
@pytest.mark.parametrize("with_nan", [False, True])
def test_equals_scipy(size, with_nan, monkeypatch):
    # tall enough for the strips (NaN, an even size or no Numba) to split over several threads
    monkeypatch.setattr(filters.os, "cpu_count", lambda: 4)
    img = _image((300, 71), seed=size)
    if with_nan:
        img[0, 0] = img[150, 30] = img[299, 70] = np.nan
    ref = ndimage.median_filter(img, size=size, mode="reflect")
    np.testing.assert_array_equal(median_filter(img, size=size), ref)
    with jit.disabled():
        np.testing.assert_array_equal(median_filter(img, size=size), ref)


def test_strips_equal_the_whole_image(monkeypatch):
    # the strips' own reflect edges must never reach a kept row: strip bounds at every row count
    img = _image((200, 9), seed=7)
    ref = ndimage.median_filter(img, size=7, mode="reflect")
    for workers in (2, 3, 5):
        monkeypatch.setattr(filters.os, "cpu_count", lambda w=workers: w)
        monkeypatch.setattr(filters, "_STRIP_ROWS", 1)
        out = filters._scipy_strips(img, 7, np.empty_like(img))
        np.testing.assert_array_equal(out, ref)


def test_out_and_bad_input():
    img = _image((20, 30))
    out = np.empty_like(img)
    assert median_filter(img, size=3, out=out) is out
    np.testing.assert_array_equal(out, ndimage.median_filter(img, size=3, mode="reflect"))
    with pytest.raises(ValueError, match="size 0"):
        median_filter(img, size=0)
    with pytest.raises(ValueError, match="one \\(H, W\\) image"):
        median_filter(img[None], size=3)


def test_signed_zeros_and_empty_images():
    # -0.0 and +0.0 compare equal: the value is scipy's, the sign of a zero may differ (documented)
    img = np.array([[0, 0, 1], [0, -0.0, 2], [-0.0, 3, 0]], np.float32)
    np.testing.assert_array_equal(median_filter(img, size=3), ndimage.median_filter(img, size=3, mode="reflect"))
    assert median_filter(np.zeros((0, 5), np.float32), size=3).shape == (0, 5)
