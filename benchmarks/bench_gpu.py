"""GPU benchmark (run by `make gpu-check`): ops on CuPy vs NumPy at 1024 x 1024, device copy roofline;
the fused correction kernel and the host <-> device conveyor at 2048 x 2048 uint16.

Writes benchmarks/results/gpu-<device-name>.json. Exits with a message where no GPU is usable.

The ``conveyor_2048`` section (GB/s are 1e9 bytes per second):

* ``d2d_copy_GBps``: a device-to-device copy (bytes read + written), the memory roofline;
* ``fused_kernel_*``: cuda/correct.cu (flat field, 0.2 % bad pixels, 3 afterglow terms, saturation) over
  a block, its bytes (2 in + 4 or 2 out per pixel, plus the maps and state) per second and the
  ratio of that to the copy's (1.0: as fast as a copy);
* ``h2d_pinned_GBps`` and ``d2h_pinned_GBps``: one big copy each way from and into pinned memory;
* ``conveyor_*``: :class:`pipeline.conveyor.Conveyor` streaming pinned uint16 blocks through all
  fused stages (then also the temporal denoiser; then also NLM, the default denoisers), frames per
  second, input bytes per second and their ratio to the H2D bandwidth; ``_f16``/``_u16``: frames
  handed back as float16 / the uint16 code (``output.dtype``), half the download of ``_f32``;
  ``bound_ratio`` is the most the downloads allow (``min(1, (2 / out bytes per pixel) * d2h / h2d)``);
  ``speedup_vs_cpu_engine``: against the same chain and frames through the CPU engine (``cpu_engine_fps``,
  float32 out, in-memory target; with NLM on one block) on this machine.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline.backend import gpu_unavailable_reason

HERE = Path(__file__).resolve().parent


def main():
    reason = gpu_unavailable_reason()
    if reason:
        print(f"bench_gpu: no GPU benchmark: {reason}")
        return 0
    from pipeline.backend import cupy_module
    from pipeline.kernels import gpu_launcher, nl_means_kernel, remove_lag_gpu
    from pipeline.ops.afterglow import remove_lag
    from pipeline.ops.denoise import (NoiseModel, _nl_means_arrays, _temporal_arrays, denoise_spatial, nl_means,
                                      temporal_filter)
    from pipeline.ops.flatfield import compute_calibration, correct_frames

    cp = cupy_module()
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    t, h, w = 32, 1024, 1024
    rng = np.random.default_rng(0)
    raw = rng.integers(100, 8000, (t, h, w)).astype(np.uint16)
    d = np.full((h, w), 100, np.float32)
    f = np.full((h, w), 8000, np.float32)

    def timed(fn, sync=None, n=5):
        fn()
        if sync:
            sync()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    sync = cp.cuda.Device().synchronize
    g_raw = cp.asarray(raw)
    out = cp.empty((t, h, w), cp.float32)
    res = {"device": name, "frames": t, "size": [h, w]}
    res["d2d_copy_float32_s"] = timed(lambda: cp.copyto(out, g_raw.astype(cp.float32)), sync)
    res["h2d_uint16_s"] = timed(lambda: cp.asarray(raw), sync)
    cal_c = compute_calibration(d, f, detect=False)
    cal_g = compute_calibration(cp.asarray(d), cp.asarray(f), detect=False)
    res["flatfield_gpu_s"] = timed(lambda: correct_frames(g_raw, cal_g, replace=False, saturation_level=65535), sync)
    res["flatfield_cpu_s"] = timed(lambda: correct_frames(raw, cal_c, replace=False, saturation_level=65535), n=3)
    y = raw.astype(np.float32)
    gy = cp.asarray(y)
    a, r = np.array([0.01, 0.003], np.float32), np.array([0.26, 0.85])
    st = cp.zeros((2, h, w), cp.float32)
    res["afterglow_kernel_gpu_s"] = timed(lambda: remove_lag_gpu(gy.copy(), a, r, st.copy()), sync)
    res["afterglow_xp_gpu_s"] = timed(lambda: remove_lag(gy, a, r, st.copy()), sync)
    res["afterglow_cpu_s"] = timed(lambda: remove_lag(y, a, r, None), n=3)
    nm = NoiseModel(0.16, 15.0)
    # the denoisers: cuda/denoise.cu (what the CuPy ops run) against the same ops' array code on the GPU and the CPU
    infl = math.sqrt(1.0 + 0.1 / 1.9) * nm.box_factor
    res["temporal_gpu_s"] = timed(lambda: temporal_filter(gy, None, noise=nm), sync)
    res["temporal_xp_gpu_s"] = timed(lambda: _temporal_arrays(gy, None, None, out=cp.empty_like(gy), noise=nm,
                                                              gmin=np.float32(0.1), lo=1.0, hi=3.0, infl=infl,
                                                              smooth=3, hold=0.0), sync, n=3)
    res["temporal_cpu_s"] = timed(lambda: temporal_filter(y, None, noise=nm), n=3)
    nlm = dict(patch_size=5, patch_distance=3, sigma=1.0)
    g_img, c_img = cp.sqrt(gy[0]), np.sqrt(y[0])  # noise of sigma ~0.5: about what the GAT gives
    res["nlm_kernel_gpu_s_per_frame"] = timed(lambda: nl_means(g_img, 0.8, **nlm), sync)
    base = gpu_launcher("denoise")  # the same launch on the runtime-patch kernel (its arrays in local memory)
    res["nlm_generic_kernel_gpu_s_per_frame"] = timed(
        lambda: nl_means_kernel(g_img, h=0.8, launch=lambda fn, g, b, a: base("nl_means_f32", g, b, a), **nlm), sync)
    res["nlm_xp_gpu_s_per_frame"] = timed(lambda: _nl_means_arrays(g_img.astype(cp.float64), 0.8, **nlm), sync, n=3)
    res["nlm_cpu_s_per_frame"] = timed(lambda: nl_means(c_img, 0.8, **nlm), n=2)
    res["nlm_gpu_s_per_frame"] = timed(lambda: denoise_spatial(gy[:2], "nlm", noise=nm), sync) / 2  # GAT, NaN check
    res["fps"] = {k[:-2]: t / v for k, v in res.items() if k.endswith("_s") and isinstance(v, float)}
    res["conveyor_2048"] = bench_conveyor(cp, timed)
    res["meta"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
                   "python": platform.python_version(), "cupy": cp.__version__}
    out_file = HERE / "results" / f"gpu-{name.replace(' ', '-')}.json"
    out_file.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


def bench_conveyor(cp, timed, *, size=2048, block=16, blocks=8, passes=4):
    """The fused kernel and the conveyor at ``size`` x ``size`` uint16 (see the module docstring)."""
    from types import SimpleNamespace

    from pipeline.config import AfterglowConfig, BadPixelConfig, DenoiseConfig, FlatFieldConfig
    from pipeline.conveyor import Conveyor, parameters_from_chain
    from pipeline.kernels import CorrectKernel
    from pipeline.ops.denoise import NoiseModel
    from pipeline.ops.flatfield import HOT, Calibration
    from pipeline.schedule import process_frames
    from pipeline.stages import AfterglowStage, Chain, FlatFieldStage, SpatialDenoiseStage, TemporalDenoiseStage

    rng = np.random.default_rng(1)
    h = w = size
    p = h * w
    sync = cp.cuda.Device().synchronize
    bp = np.zeros((h, w), np.uint8)
    bp[rng.random((h, w)) < 0.002] = HOT
    cal = Calibration(dark=rng.uniform(90, 110, (h, w)).astype(np.float32),
                      gain=rng.uniform(0.8, 1.2, (h, w)).astype(np.float32), flat_level=7000.0, exposure_ratio=1.0,
                      bad_pixels=bp)
    ff = FlatFieldStage(cal, FlatFieldConfig(saturation_level=16000.0, bad_pixels=BadPixelConfig(replace=True)),
                        np.uint16)
    lag = AfterglowStage(SimpleNamespace(amplitudes=np.array([0.01, 0.004, 0.001]), ratios=np.array([0.3, 0.8, 0.98])),
                         AfterglowConfig(initial_state="zero"))
    chain = Chain(ff, [lag])
    out = {"size": [h, w], "block_frames": block, "blocks": blocks, "passes": passes,
           "bad_pixel_fraction": float((bp != 0).mean())}

    src = cp.asarray(rng.integers(0, 16384, (block, h, w)).astype(np.uint16))
    big = cp.empty((block, h, w), cp.float32)
    big2 = cp.empty_like(big)
    t_copy = timed(lambda: cp.copyto(big2, big), sync)
    out["d2d_copy_GBps"] = 2 * big.nbytes / t_copy / 1e9

    params = parameters_from_chain(chain, (h, w))
    kernel = CorrectKernel(params)
    state = cp.zeros((3, h, w), cp.float32)
    fixed = p * 4 * (2 + 2 * 3) + p * 4  # dark, inv, state in and out, slot map
    for name, dt in (("f32", cp.float32), ("f16", cp.float16), ("u16", cp.uint16)):
        o = cp.empty((block, h, w), dt)
        tk = timed(lambda o=o: kernel(src, o, state), sync)
        moved = block * p * (2 + o.itemsize) + fixed
        out[f"fused_kernel_{name}_s"] = tk
        out[f"fused_kernel_{name}_GBps"] = moved / tk / 1e9
        out[f"fused_kernel_{name}_ratio_to_copy"] = (moved / tk) / (2 * big.nbytes / t_copy)
        out[f"fused_kernel_{name}_fps"] = block / tk
    out["fused_kernel_variants"] = kernel_variants(cp, timed, sync, params, src, block * p * 6 + fixed,
                                                   2 * big.nbytes / t_copy)

    dev_in = cp.empty((block, h, w), cp.uint16)
    pinned = cupy_pinned(cp, (block, h, w), np.uint16)
    pinned[...] = cp.asnumpy(src)
    stream = cp.cuda.Stream(non_blocking=True)
    t_h2d = timed(lambda: (dev_in.set(pinned, stream=stream), stream.synchronize()))
    out["h2d_pinned_GBps"] = pinned.nbytes / t_h2d / 1e9
    pin_out = cupy_pinned(cp, (block, h, w), np.float32)
    t_d2h = timed(lambda: (big.get(stream=stream, out=pin_out, blocking=False), stream.synchronize()))
    out["d2h_pinned_GBps"] = pin_out.nbytes / t_d2h / 1e9
    # both directions at once, as the conveyor moves them: a block up (2 bytes a pixel) while one comes down
    # (2 or 4 bytes a pixel); the frames per second this allows bounds the conveyor (the link may not carry
    # both directions at full speed together)
    stream2 = cp.cuda.Stream(non_blocking=True)
    pin16 = cupy_pinned(cp, (block, h, w), np.uint16)
    for name, dsrc, dpin in (("f16", src, pin16), ("f32", big, pin_out)):
        def both(dsrc=dsrc, dpin=dpin):
            dev_in.set(pinned, stream=stream)
            dsrc.get(stream=stream2, out=dpin, blocking=False)
            stream.synchronize()
            stream2.synchronize()
        tb = timed(both)
        out[f"bidirectional_{name}_fps"] = block / tb
        out[f"bidirectional_{name}_h2d_GBps"] = pinned.nbytes / tb / 1e9

    video = [cupy_pinned(cp, (block, h, w), np.uint16) for _ in range(blocks)]
    for v in video:
        v[...] = rng.integers(0, 16384, (block, h, w), dtype=np.uint16)
    host_video = np.concatenate([np.asarray(v) for v in video])
    cpu_fps: dict = {}

    def cpu_engine(ch, key):  # the same chain and frames through the CPU engine (NLM: one block, it is slow)
        if key not in cpu_fps:
            n = block if key == "default" else blocks * block
            tgt = np.empty((n, h, w), np.float32)
            tc = timed(lambda: process_frames(host_video[:n], tgt, ch, chunk_frames=block, scheduler="threads"), n=1)
            cpu_fps[key] = n / tc
        return cpu_fps[key]

    dn = DenoiseConfig(enabled=True)
    nm = NoiseModel(0.5, 20.0)
    temporal = Chain(ff, [lag, TemporalDenoiseStage(nm, dn)])
    default = Chain(ff, [lag, TemporalDenoiseStage(nm, dn)], post=[SpatialDenoiseStage(nm, dn)])  # + NLM
    for label, ch, dt in (("fused_f32", chain, np.float32), ("fused_f16", chain, np.float16),
                          ("fused_u16", chain, np.uint16), ("temporal_f32", temporal, np.float32),
                          ("default_nlm_f32", default, np.float32), ("default_nlm_u16", default, np.uint16)):
        conv = Conveyor(ch, (h, w), block_frames=block, out_dtype=dt)
        assert all(conv.dev.is_pinned(v) for v in video)

        n_blocks = blocks * (passes if not label.startswith("default") else 1)  # NLM: slow enough as it is

        def run(conv=conv, n_blocks=n_blocks):
            for _ in conv.stream((i, video[i % blocks], True) for i in range(n_blocks)):
                pass

        tc = timed(run, n=3)
        rate = n_blocks * block * p * 2 / tc
        out[f"conveyor_{label}_s"] = tc
        out[f"conveyor_{label}_frames"] = n_blocks * block
        out[f"conveyor_{label}_fps"] = n_blocks * block / tc
        out[f"conveyor_{label}_input_GBps"] = rate / 1e9
        out[f"conveyor_{label}_ratio_to_h2d"] = rate / (out["h2d_pinned_GBps"] * 1e9)
        isz = np.dtype(dt).itemsize
        out[f"conveyor_{label}_bound_ratio"] = min(1.0, (2 / isz) * out["d2h_pinned_GBps"] / out["h2d_pinned_GBps"])
        both = out["bidirectional_f16_fps" if isz == 2 else "bidirectional_f32_fps"]
        out[f"conveyor_{label}_ratio_to_bidirectional"] = out[f"conveyor_{label}_fps"] / both
        out[f"conveyor_{label}_block_frames"] = conv.block_frames
        key = label.rsplit("_", 1)[0].replace("default_nlm", "default")
        out[f"conveyor_{label}_speedup_vs_cpu_engine"] = out[f"conveyor_{label}_fps"] / cpu_engine(ch, key)
    out["cpu_engine_fps"] = cpu_fps
    return out


def kernel_variants(cp, timed, sync, params, src, moved, copy_rate):
    """Where the fused kernel's time goes: it (float32 out) without bad pixels, without afterglow, and built
    with one pixel a thread instead of four, with other numbers of frames' loads in flight (XRAY_FRAMES_IN_FLIGHT),
    with the generic (local-array) medians, with the bad pixels' values loaded frame by frame instead of with
    the raw values (XRAY_PREFETCH_BAD=0), and with those values read but the launch computing them left out; ``ratio_to_copy`` counts the full kernel's bytes in every case (a time ratio, not the variant's own
    traffic)."""
    import dataclasses

    from pipeline.kernels import CorrectKernel

    res = {}
    t, h, w = src.shape
    o = cp.empty((t, h, w), cp.float32)
    cases = {"as_built": (params, None), "one_pixel_per_thread": (params, "lanes1"),
             "no_bad_pixels": (dataclasses.replace(params, targets=np.zeros(0, np.int64),
                                                   neighbours=np.full((0, 1), -1, np.int32), slot=None), None),
             "no_afterglow": (dataclasses.replace(params, amplitudes=np.zeros(0, np.float32),
                                                  ratios=np.zeros(0, np.float32)), None)}
    cases["generic_bad_pixel_medians"] = (params, "generic")  # the medians in a local array, not in registers
    cases["bad_values_frame_by_frame"] = (params, "XRAY_PREFETCH_BAD=0")  # not loaded with the raw values
    for fif in (2, 8):
        cases[f"frames_in_flight_{fif}"] = (params, fif)
    for name, (prm, how) in cases.items():
        # the same source, rebuilt with other macros where the case names them
        defines = ((f"XRAY_FRAMES_IN_FLIGHT={how}",) if isinstance(how, int)
                   else (how,) if isinstance(how, str) and "=" in how else ())
        k = CorrectKernel(prm, lanes=1 if how == "lanes1" else None, defines=defines,
                          register_medians=how != "generic")
        st = cp.zeros((max(prm.n_terms, 1), h, w), cp.float32)
        tk = timed(lambda k=k, st=st: k(src, o, st), sync)
        res[name] = {"s": tk, "fps": t / tk, "ratio_to_copy": moved / tk / copy_rate, "median_kernel": k.median_kernel,
                     "bad_pixel_table_columns": int(prm.neighbours.shape[1])}
    # the bad pixels' cost split in two: the main kernel reading the replacement values (as_built's, left in
    # place by a first call) without the launch that computes them; as_built minus this = the median launch,
    # this minus no_bad_pixels = what the bad pixels cost the main kernel
    k = CorrectKernel(params)
    st = cp.zeros((max(params.n_terms, 1), h, w), cp.float32)
    k(src, o, st)
    sync()
    k._bad_heads = {dt: (lambda *args, **kw: None) for dt in k._bad_heads}
    tk = timed(lambda: k(src, o, st), sync)
    res["bad_pixels_without_median_launch"] = {"s": tk, "fps": t / tk, "ratio_to_copy": moved / tk / copy_rate,
                                               "bad_pixel_table_columns": int(params.neighbours.shape[1])}
    # a 4x longer block: the maps and the state are read and written once a block, so they weigh less
    src4 = cp.concatenate([src] * 4)
    o4 = cp.empty(src4.shape, cp.float32)
    k = CorrectKernel(params)
    st = cp.zeros((params.n_terms, h, w), cp.float32)
    tk = timed(lambda: k(src4, o4, st), sync)
    moved4 = moved + 3 * t * h * w * 6  # three more blocks' frames (2 bytes in, 4 out a pixel)
    res[f"block_{4 * t}"] = {"s": tk, "fps": 4 * t / tk, "ratio_to_copy": moved4 / tk / copy_rate}
    return res


def cupy_pinned(cp, shape, dtype):
    """A NumPy array in page-locked host memory."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    return np.frombuffer(cp.cuda.alloc_pinned_memory(n * dtype.itemsize), dtype, n).reshape(shape)


if __name__ == "__main__":
    sys.exit(main())
