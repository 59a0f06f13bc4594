"""Stage benchmarks: each stage and its peers (scikit-image, scipy, the textbook MTF) on the same blocks."""


from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import api
from ..config import RunConfig
from ..io import zarr_store
from ..ops.afterglow import ratios_from_tau, remove_lag
from ..ops.denoise import denoise_spatial, estimate_noise_model, temporal_filter
from ..ops.mtf import slanted_edge_mtf
from ..stages import FlatFieldStage
from .common import BENCH_AFTERGLOW, _edge_rois, _entry, _Host, textbook_mtf, time_it

#: the spatial denoisers timed beside the configured one: the default, the quality option, the edge-preserving one
SPATIAL_METHODS = ("guided", "nlm", "bilateral")


def bench_stages(path: Path, *, host: _Host, config: RunConfig, repeats: int, block_frames: int,
                 peers: bool = True, log=print) -> dict:
    """Every stage alone on one in-memory block of the video at ``path``; rooflines and peers beside them."""
    xp = host.xp
    ds = zarr_store.open_input(path)
    raw_h = np.ascontiguousarray(ds.reader()[: block_frames])
    t, h, w = raw_h.shape
    px = h * w
    cal_h = api.calibrate(path, config)
    from ..ops.flatfield import Calibration

    cal = Calibration(**{k: (host.put(v) if isinstance(v, np.ndarray) else v) for k, v in vars(cal_h).items()})
    raw = host.put(raw_h)
    ff = FlatFieldStage(cal, config.flatfield, raw_h.dtype)
    block = ff.tail(*ff.head(raw))
    noise = estimate_noise_model(block[: min(8, t)])
    dn = config.denoise
    r = ratios_from_tau(BENCH_AFTERGLOW["tau_s"], BENCH_AFTERGLOW["frame_rate_hz"])
    amps = np.asarray(BENCH_AFTERGLOW["amplitudes"], np.float32)
    out32 = xp.empty((t, h, w), xp.float32)
    work = xp.empty_like(block)
    res: dict = {}
    sync = host.sync

    def run(name, fn, frames, nbytes, roofline=None, kind="stage", reps=repeats, budget=None, warmup=1, setup=None):
        timing = time_it(fn, repeats=reps, warmup=warmup, sync=sync, budget_s=budget, setup=setup)
        res[name] = _entry(timing, frames=frames, nbytes=nbytes, roofline=roofline, kind=kind)
        log(f"    {name:<34} {res[name]['per_s']:9.1f} frames/s  {res[name]['GB_per_s']:7.2f} GB/s")

    b16, b32 = raw_h.itemsize * t * px, 4 * t * px
    # rooflines: a copy of the same bytes
    run("memcopy uint16->float32", lambda: xp.copyto(out32, raw), t, b16 + b32, kind="roofline")
    run("memcopy float32", lambda: xp.copyto(out32, block), t, 2 * b32, kind="roofline")
    # the stages
    # as in a run: the block buffer is reused (a run recycles written blocks), so page faults are not counted
    run("flatfield", lambda: ff.tail(*ff.head(raw, out=out32)), t, b16 + b32, "memcopy uint16->float32")

    lag_state = xp.zeros((2, h, w), xp.float32)

    def fresh():  # the stateful stages work in place: restore their input and state (not timed)
        xp.copyto(work, block)
        lag_state[...] = 0

    run("afterglow (2 terms)", lambda: remove_lag(work, amps, r, lag_state, out=work), t, 2 * b32,
        "memcopy float32", setup=fresh)
    run("denoise temporal", lambda: temporal_filter(work, None, noise=noise, gain_min=dn.temporal_gain_min,
                                                    threshold=dn.temporal_threshold, smooth=dn.temporal_smooth,
                                                    hold=dn.temporal_hold, out=work),
        t, 2 * b32, "memcopy float32", setup=fresh)
    # spatial denoisers cost far more per frame: time a few frames; the configured one first, then the others
    n_sp = max(1, min(t, int(4 * (512 * 512) / px)))
    sp = block[:n_sp]
    params = dn.model_dump()
    for method in dict.fromkeys([dn.method, *SPATIAL_METHODS]):
        if method == "none":
            continue
        run(f"denoise {method}" + (" (GAT)" if dn.anscombe else ""),
            lambda m=method: denoise_spatial(sp, m, noise=noise, anscombe=dn.anscombe, params=params),
            n_sp, 2 * 4 * n_sp * px, "memcopy float32", reps=max(1, repeats - 1), budget=20.0)
    if peers and xp is np:
        _bench_peers(run, raw_h, cal_h, sp, noise, params, t, n_sp, px, b16, b32, repeats)
    if xp is not np:
        host_out = np.empty((t, h, w), np.float32)
        run("host->device copy uint16", lambda: xp.asarray(raw_h), t, b16, kind="roofline")
        run("device->host copy float32", lambda: block.get(out=host_out), t, b32, kind="roofline")
        if peers:
            _bench_gpu_peers(run, xp, raw, cal, t, b16, b32)
    return res


def _bench_gpu_peers(run, xp, raw, cal, t, b16, b32):
    """GPU peers: the same flat-field written naively in CuPy (unfused), and httomolibgpu's when installed."""
    dark = cal.dark
    flat = (dark + cal.gain * np.float32(cal.flat_level)).astype(xp.float32)
    run("peer: cupy naive flat-field", lambda: (raw.astype(xp.float32) - dark) / (flat - dark), t, b16 + b32,
        "memcopy uint16->float32", kind="peer")
    try:
        from httomolibgpu.prep.normalize import dark_flat_field_correction
    except Exception:  # pragma: no cover - optional
        return
    try:  # its keyword options differ between releases: data, flats, darks only
        run("peer: httomolibgpu dark_flat_field_correction",
            lambda: dark_flat_field_correction(raw, flat[None], dark[None]), t, b16 + b32,
            "memcopy uint16->float32", kind="peer")
    except Exception as exc:  # pragma: no cover - depends on the installed release
        print(f"    peer httomolibgpu skipped: {type(exc).__name__}: {exc}")


def _bench_peers(run, raw, cal, sp, noise, params, t, n_sp, px, b16, b32, repeats):
    """CPU peers on the same data: textbook NumPy flat-field, algotom, scikit-image denoisers."""
    dark = np.asarray(cal.dark, np.float32)
    flat = (dark + np.asarray(cal.gain, np.float32) * np.float32(cal.flat_level)).astype(np.float32)
    out = np.empty(raw.shape, np.float32)

    def numpy_loop():
        for k in range(raw.shape[0]):
            out[k] = (raw[k] - dark) / (flat - dark)

    run("peer: numpy loop flat-field", numpy_loop, t, b16 + b32, "memcopy uint16->float32", kind="peer")
    try:
        from algotom.prep.correction import flat_field_correction
    except Exception:  # pragma: no cover - optional
        flat_field_correction = None
    if flat_field_correction is not None:
        run("peer: algotom flat_field_correction", lambda: flat_field_correction(raw, flat, dark), t, b16 + b32,
            "memcopy uint16->float32", kind="peer")
    from skimage.restoration import denoise_bilateral, denoise_nl_means

    from ..ops.denoise import gat_forward

    g = np.asarray(gat_forward(sp, noise.alpha, noise.beta), np.float32)
    h = float(params.get("nlm_h", 0.8))

    def sk_nlm():
        for k in range(g.shape[0]):
            denoise_nl_means(g[k], h=h, sigma=float(params.get("nlm_sigma", 1.0)),
                             patch_size=int(params.get("nlm_patch", 5)),
                             patch_distance=int(params.get("nlm_search", 3)), fast_mode=True)

    def sk_bilateral():
        for k in range(g.shape[0]):
            denoise_bilateral(g[k], sigma_color=float(params.get("bilateral_sigma_range", 2.0)),
                              sigma_spatial=float(params.get("bilateral_sigma_spatial", 2.0)), mode="reflect")

    run("peer: skimage denoise_nl_means", sk_nlm, n_sp, 2 * 4 * n_sp * px, "memcopy float32", kind="peer",
        reps=max(1, repeats - 1), budget=20.0)
    run("peer: skimage denoise_bilateral", sk_bilateral, n_sp, 2 * 4 * n_sp * px, "memcopy float32", kind="peer",
        reps=max(1, repeats - 1), budget=20.0)


def bench_mtf(*, repeats: int, roi: int = 128, n: int = 64, device: str = "cpu", log=print) -> dict:
    """Slanted-edge MTF on ``n`` noisy ROIs of ``roi`` x ``roi``: the batched implementation against one ROI at a
    time and a textbook per-ROI peer, all on NumPy arrays (the CPU); with ``device="gpu"`` also the batched one on
    ROIs already on the GPU (its results come back to the host, so each timed call ends synchronised).

    Returns
    -------
    dict
        Job name -> timing entry (``per_s`` in ROIs/s), each with ``ratio_to_textbook``: its ROIs/s over the
        textbook peer's.
    """
    rng = np.random.default_rng(5)
    rois = _edge_rois(n, roi, rng)
    res = {}
    jobs = {
        "mtf batched": lambda: slanted_edge_mtf(rois),
        "mtf one ROI at a time": lambda: [slanted_edge_mtf(rois[i : i + 1]) for i in range(n)],
        "peer: textbook per-ROI mtf": lambda: [textbook_mtf(rois[i]) for i in range(n)],
    }
    if device == "gpu":
        on_gpu = _Host("gpu").put(rois)
        jobs["mtf batched [gpu]"] = lambda: slanted_edge_mtf(on_gpu)
    for name, fn in jobs.items():
        timing = time_it(fn, repeats=repeats, warmup=1)
        res[name] = _entry(timing, frames=n, nbytes=4 * n * roi * roi, kind="peer" if "peer" in name else "stage",
                           unit=f"ROIs ({roi}x{roi})")
        log(f"    {name:<34} {res[name]['per_s']:9.1f} ROIs/s")
    peer = res["peer: textbook per-ROI mtf"]["per_s"]
    for e in res.values():
        e["ratio_to_textbook"] = e["per_s"] / peer
    return res


def bench_mtf_sizes(*, repeats: int, sizes=(128, 256), n: int = 256, device: str = "cpu", log=print) -> dict:
    """:func:`bench_mtf` at each ROI size of ``sizes``, ``n`` ROIs per call (256: as benchmarks/bench_mtf.py, a
    batch of frames x ROIs); returns ``{"128x128": {job: entry}, ...}``."""
    out = {}
    for roi in sizes:
        log(f"  {roi} x {roi} ROIs")
        out[f"{roi}x{roi}"] = bench_mtf(repeats=repeats, roi=roi, n=n, device=device, log=log)
    return out
