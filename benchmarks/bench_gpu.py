"""GPU benchmark (run by `make gpu-check`): ops on CuPy vs NumPy at 1024 x 1024, device copy roofline.

Writes benchmarks/results/gpu-<device-name>.json. Exits with a message where no GPU is usable.
"""

from __future__ import annotations

import json
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
    import cupy as cp

    from pipeline.kernels import remove_lag_gpu
    from pipeline.ops.afterglow import remove_lag
    from pipeline.ops.denoise import NoiseModel, denoise_spatial, temporal_filter
    from pipeline.ops.flatfield import compute_calibration, correct_frames

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
    res["temporal_gpu_s"] = timed(lambda: temporal_filter(gy, None, noise=nm), sync)
    res["nlm_gpu_s_per_frame"] = timed(lambda: denoise_spatial(gy[:2], "nlm", noise=nm), sync) / 2
    res["fps"] = {k[:-2]: t / v for k, v in res.items() if k.endswith("_s") and isinstance(v, float)}
    res["meta"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
                   "python": platform.python_version(), "cupy": cp.__version__}
    out_file = HERE / "results" / f"gpu-{name.replace(' ', '-')}.json"
    out_file.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
