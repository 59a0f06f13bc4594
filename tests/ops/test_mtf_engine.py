"""The batched slanted-edge engine (pipeline.ops.mtf) against per-ROI references, and its array-module path.

* the packed bincount (sums and counts from one pass) against a textbook per-ROI binning of every pixel;
* the variable triangle against a direct weighted average;
* batches split into groups and sub-groups against one ROI at a time, on random edges;
* the xp (CuPy) path run on a fake device module: NumPy underneath, but its arrays refuse NumPy functions,
  implicit conversion and host operands as CuPy's do, so a NumPy-only call on the device path fails here.
"""

import math
import operator

import numpy as np
import pytest

import pipeline.ops.esf as esf
import pipeline.ops.mtf as mtf
from pipeline.screen import pixel_esf


def _edges(n, size, rng, *, dtype=np.float64, noise=5.0):
    """Random slanted edges (2-12 deg, both polarities, offsets of +-6 px, pixel-integrated Gaussian + tail)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        t = math.radians(rng.uniform(2, 12)) * rng.choice([-1, 1])
        d = (xx - (w - 1) / 2 - rng.uniform(-6, 6)) * math.cos(t) - (yy - (h - 1) / 2) * math.sin(t)
        img = 100 + 900 * pixel_esf(d, abs(math.cos(t)), abs(math.sin(t)), rng.uniform(0.5, 2.5), 0.1, 3.0)
        img = img[:, ::-1] if rng.random() < 0.5 else img
        out.append(img + rng.normal(0, noise, img.shape))
    return np.stack(out).astype(dtype)


def test_packed_bincount_equals_per_roi_binning():
    """Sums and counts of every bin equal a per-ROI np.bincount of floor(p * oversample) (p along the normal)."""
    rng = np.random.default_rng(11)
    a = _edges(5, (70, 90), rng, dtype=np.float32) * 40  # values to ~4e4: K spans a wide range
    coef = np.array([[44.2, 0.05, 0.0], [40.0, -0.12, 0.0], [47.5, 0.2, 0.0], [45.0, 0.08, 4e-4], [43.3, 0.0, 0.0]])
    h, w = a.shape[1:]
    geo = esf._bin_geometry(coef, h, w, 4, np)
    sums, counts = esf._binned(a, {k: v for k, v in geo.items() if k != "span"}, geo["span"], np)
    got = {"sums": sums, "counts": counts, "k_lo": geo["k_lo"]}
    yr = np.arange(h) - (h - 1) / 2
    span = geo["span"]
    for i in range(len(a)):
        xedge = coef[i, 0] + coef[i, 1] * yr + coef[i, 2] * yr**2
        cos = 1 / np.sqrt(1 + (coef[i, 1] + 2 * coef[i, 2] * yr) ** 2)
        k = np.floor((np.arange(w)[None, :] - xedge[:, None]) * cos[:, None] * 4).astype(np.int64)
        k = (k - int(got["k_lo"][i])).ravel()
        assert k.min() >= 0 and k.max() < span
        counts = np.bincount(k, minlength=span)
        sums = np.bincount(k, weights=a[i].astype(np.float64).ravel(), minlength=span)
        # a pixel within rounding of a bin boundary may fall either side: compare the bins that agree on counts
        same = counts == got["counts"][i]
        assert same.mean() > 0.995
        np.testing.assert_allclose(got["sums"][i][same], sums[same], rtol=1e-11, atol=1e-9 * np.abs(a[i]).max())
        assert got["counts"][i].sum() == h * w


def test_packed_bincount_exact_counts_and_fallback():
    """Counts are exact integers; absurd pixel ranges take the two-bincount path with the same result."""
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, (3, 16, 20))
    a[1] *= 1e-3  # K per ROI: a small ROI keeps its own precision
    idx = (np.arange(320)[None, :] * 7 % 40 + 40 * np.arange(3)[:, None]).astype(np.int64).ravel()  # ROI i: bins 40i..
    want_s, want_c = np.bincount(idx, weights=a.ravel(), minlength=120), np.bincount(idx, minlength=120)
    s, c = esf._sums_and_counts(a, idx, esf._bin_offsets(a, np.full(3, 16.0), np), 120, np)
    np.testing.assert_array_equal(c, want_c)
    np.testing.assert_allclose(s, want_s, rtol=1e-11, atol=1e-13)
    k = esf._bin_offsets(a * 1e300, np.full(3, 16.0), np)
    assert k is None  # absurd: the two-bincount path
    s2, c2 = esf._sums_and_counts(a * 1e300, idx, k, 120, np)
    np.testing.assert_array_equal(c2, want_c)
    np.testing.assert_allclose(s2, want_s * 1e300, rtol=1e-12)


def test_triangle_equals_direct_weighted_average():
    rng = np.random.default_rng(5)
    v = np.cumsum(rng.normal(size=(3, 60)), axis=1) + 50
    h = rng.integers(0, 7, size=v.shape)
    got = esf._triangle(v, h, 6, np)
    ext = np.concatenate([np.repeat(v[:, :1], 7, 1), v, np.repeat(v[:, -1:], 7, 1)], axis=1)  # end values beyond
    for r in range(3):
        for i in range(60):
            k = np.arange(-h[r, i], h[r, i] + 1)
            wts = h[r, i] + 1 - np.abs(k)
            want = (wts * ext[r, i + 7 + k]).sum() / wts.sum()
            assert got[r, i] == pytest.approx(want, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_groups_and_subgroups_equal_one_roi_at_a_time(monkeypatch, dtype):
    """A batch split into several groups and binning sub-groups gives each ROI's result alone (random edges)."""
    rng = np.random.default_rng(3)
    rois = _edges(7, (48, 64), rng, dtype=np.float64)
    rois = rois.astype(dtype) if dtype != np.uint16 else np.round(rois).astype(np.uint16)
    monkeypatch.setattr(mtf, "_CPU_GROUP_PIXELS", 3 * 48 * 64)
    monkeypatch.setattr(mtf, "_CPU_BIN_PIXELS", 2 * 48 * 64)
    batch = mtf.slanted_edge_mtf(rois, window="hann")
    assert batch.extra["groups"] == 3
    for i in range(len(rois)):
        one = mtf.slanted_edge_mtf(rois[i], window="hann")
        np.testing.assert_allclose(batch.mtf[i], one.mtf[0], rtol=1e-10, atol=1e-12)
        for lv in mtf.LEVELS:
            assert batch.crossings_cy_per_px[lv][i] == pytest.approx(one.crossings_cy_per_px[lv][0], rel=1e-10)
        assert batch.flags[i] == one.flags[0]
        assert batch.angle_deg[i] == pytest.approx(one.angle_deg[0], rel=1e-12, abs=1e-12)


def test_noise_free_edge_is_not_smoothed():
    """On a noise-free edge the adaptive ESF leaves the MTF as the plain binned ESF gives it (to rounding)."""
    rng = np.random.default_rng(8)
    rois = _edges(3, (96, 96), rng, noise=0.0)
    a = mtf.slanted_edge_mtf(rois)
    b = mtf.slanted_edge_mtf(rois, esf_smoothing="none")
    np.testing.assert_allclose(a.mtf, b.mtf, atol=1e-9)
    with pytest.raises(ValueError, match="esf_smoothing"):
        mtf.slanted_edge_mtf(rois, esf_smoothing="loess")


# --------------------------------------------------------------------------- a fake device module


class _Dev:
    """An array 'on the device': NumPy underneath, but, as a CuPy array, it will not become a NumPy array
    implicitly, takes no NumPy array as operand and is refused by NumPy's functions and ufuncs."""

    __array_ufunc__ = None  # np.ufunc(dev) and ndarray (op) dev raise TypeError

    def __init__(self, a):
        self.a = a

    def __array__(self, *args, **kwargs):
        raise TypeError("implicit conversion of a device array to NumPy")

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} called on a device array")

    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__ and the like: NumPy must not read it
            raise AttributeError(name)
        v = getattr(self.a, name)
        return (lambda *a, **k: _wrap(v(*_unwrap(a), **_unwrap(k)))) if callable(v) else _wrap(v)

    def __getitem__(self, key):
        return _wrap(self.a[_unwrap(key)])

    def __setitem__(self, key, value):
        self.a[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        return len(self.a)

    def __float__(self):
        return float(self.a)

    def __int__(self):
        return int(self.a)

    def __bool__(self):
        return bool(self.a)


def _unwrap(x):
    if isinstance(x, _Dev):
        return x.a
    if isinstance(x, np.ndarray) and x.ndim > 0:
        raise TypeError("a host (NumPy) array passed to a device operation")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x):
    if isinstance(x, np.ndarray):
        return _Dev(x)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    return x


def _binary(op, reflected=False):
    def f(self, other):
        a, b = self.a, _unwrap(other)
        return _wrap(op(b, a) if reflected else op(a, b))
    return f


def _inplace(op):
    def f(self, other):
        op(self.a, _unwrap(other))
        return self
    return f


for _name in ("add", "sub", "mul", "truediv", "floordiv", "pow", "matmul", "and", "or", "xor", "mod", "rshift",
              "lshift"):
    _op = getattr(operator, _name + ("_" if _name in ("and", "or") else ""))
    setattr(_Dev, f"__{_name}__", _binary(_op))
    setattr(_Dev, f"__r{_name}__", _binary(_op, reflected=True))
    setattr(_Dev, f"__i{_name}__", _inplace(getattr(operator, "i" + _name)))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(_Dev, f"__{_name}__", _binary(getattr(operator, _name)))
for _name in ("neg", "invert", "abs", "pos"):
    setattr(_Dev, f"__{_name}__", (lambda op: lambda self: _wrap(op(self.a)))(getattr(operator, _name)))


class _FakeCupy:
    """The device module: NumPy's functions on unwrapped device arrays (host arrays refused, as CuPy does),
    ``asarray``/``array`` the only way in; ``fft.rfft`` without ``out`` (CuPy's has none)."""

    def __init__(self, mod=np):
        self._mod = mod

    def __getattr__(self, name):
        v = getattr(self._mod, name)
        if name in ("fft", "linalg"):
            return _FakeCupy(v)
        if name in ("asarray", "array", "ascontiguousarray") and self._mod is np:
            return lambda x, *a, **k: _Dev(np.array(x.a if isinstance(x, _Dev) else x, *a, **k))
        if name == "rfft":
            return lambda x, n=None, axis=-1: _Dev(np.fft.rfft(_unwrap(x), n=n, axis=axis))
        if callable(v) and not isinstance(v, type):
            return lambda *a, **k: _wrap(v(*_unwrap(a), **_unwrap(k)))
        return v


@pytest.fixture
def fake_device(monkeypatch):
    xp = _FakeCupy()
    for module in (mtf, esf):  # the engine and its binned ESF
        monkeypatch.setattr(module, "get_xp", lambda a: xp if isinstance(a, _Dev) else np)
        monkeypatch.setattr(module, "to_host", lambda a: np.array(a.a) if isinstance(a, _Dev) else np.asarray(a))
    return xp


def test_fake_device_refuses_numpy_only_calls(fake_device):
    d = _Dev(np.arange(4.0))
    for bad in (lambda: np.asarray(d), lambda: np.exp(d), lambda: np.concatenate([d, d]), lambda: d + np.ones(4),
                lambda: fake_device.where(np.ones(4, bool), d, 0.0)):
        with pytest.raises(TypeError):
            bad()
    assert float((d * 2).sum()) == 12.0


@pytest.mark.parametrize("kw", [{}, {"window": "none", "poly_order": 2}, {"esf_smoothing": "none", "f_max": 0.6}])
def test_device_path_equals_numpy_path(fake_device, kw):
    """The xp path (every branch CuPy takes) on the fake device: the NumPy path's results, field by field."""
    rng = np.random.default_rng(21)
    rois = _edges(5, (64, 80), rng, dtype=np.float32)
    rois[3] = 500.0  # no edge: a singular fit, flagged alike
    host = mtf.slanted_edge_mtf(rois, **kw)
    dev = mtf.slanted_edge_mtf(_Dev(rois), **kw)
    np.testing.assert_allclose(dev.mtf, host.mtf, rtol=1e-9, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(dev.esf, host.esf, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dev.lsf, host.lsf, rtol=1e-9, atol=1e-9)
    for lv in mtf.LEVELS:
        np.testing.assert_allclose(dev.crossings_cy_per_px[lv], host.crossings_cy_per_px[lv], rtol=1e-9,
                                   equal_nan=True)
    np.testing.assert_allclose(dev.angle_deg, host.angle_deg, rtol=1e-12, atol=1e-12)
    assert dev.flags == host.flags and "edge_fit_poor" in host.flags[3]
    # a horizontal edge (transposed ROIs) takes the swap on the device too
    t = mtf.slanted_edge_mtf(_Dev(np.ascontiguousarray(rois[:3].transpose(0, 2, 1))), **kw)
    assert t.orientation == "horizontal"
    np.testing.assert_allclose(t.mtf, host.mtf[:3], rtol=1e-9, atol=1e-12)


def test_edge_at_a_border_in_a_batch_is_flagged_not_fatal(monkeypatch):
    """ROIs whose edge leaves no room (at either border, first or last in a binning sub-group) get NaN curves and
    the edge_not_found flag; the others are measured as alone."""
    rng = np.random.default_rng(9)
    rois = _edges(4, (48, 64), rng, noise=1.0)
    yy, xx = np.mgrid[0:48, 0:64]
    rois[0] = 100 + 900 * (xx > 1.5 + 0.05 * yy)  # the edge at the left border
    rois[3] = 100 + 900 * (xx > 61.5 - 0.05 * yy)  # ... at the right border
    monkeypatch.setattr(mtf, "_CPU_BIN_PIXELS", 2 * 48 * 64)
    r = mtf.slanted_edge_mtf(rois)
    for i in (0, 3):
        assert np.isnan(r.mtf[i]).all() and "edge_not_found" in r.flags[i]
    one = mtf.slanted_edge_mtf(rois[1])
    np.testing.assert_allclose(r.mtf[1], one.mtf[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_binning_kernel_equals_the_bincount_path_bit_for_bit(dtype):
    """On a CPU the bins' sums come from one Numba pass over the pixels (cpu.stats.edge_bins_into): the same
    additions in the same order as numpy.bincount, so the MTF is bit-identical with and without it, for straight
    and curved edges, a batch of ROIs of different sizes of edge and for a ROI without an edge."""
    from pipeline import jit
    from pipeline.screen import gaussian_edges

    if not jit.available():
        pytest.skip("Numba kernels are off")
    rois = gaussian_edges(12, 96, np.random.default_rng(4)).astype(dtype)
    rois[3] = 500.0  # no edge: its fit fails and its pixels may reach beyond its bins (the NumPy path then)
    for kw in ({}, {"poly_order": 2}):
        fused = mtf.slanted_edge_mtf(rois, **kw)
        with jit.disabled():
            plain = mtf.slanted_edge_mtf(rois, **kw)
        np.testing.assert_array_equal(fused.mtf, plain.mtf)
        np.testing.assert_array_equal(fused.esf, plain.esf)
    from pipeline.cpu.stats import edge_bins_into

    rng = np.random.default_rng(1)
    a = rng.normal(100, 5, (3, 20, 30))
    sl = rng.uniform(0.9, 1.1, (3, 20))
    o = rng.uniform(0, 5, (3, 20)) + (np.arange(3) * 60.0)[:, None]
    k = np.full(3, 2.0**20)
    total = np.zeros(180)
    assert edge_bins_into(a, sl, o, k, total, 60)
    idx = (np.arange(30)[None, None, :] * sl[:, :, None] + o[:, :, None]).astype(np.int64)
    want = np.bincount(idx.ravel(), weights=(a + k[:, None, None]).ravel(), minlength=180)
    np.testing.assert_array_equal(total, want)
    o[1, 0] = 100.0  # a row of ROI 1 reaching ROI 2's bins: refused (the NumPy path adds it where bincount does)
    assert not edge_bins_into(a, sl, o, k, np.zeros(180), 60)
