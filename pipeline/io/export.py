"""Export: TIFF stacks (exact values) and MP4/GIF previews (8-bit, intensity window)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError


def write_tiff_stack(frames, dest: Path, *, block: int = 16) -> Path:
    """Write every frame as one page of a (BigTIFF when large) multi-page TIFF, streamed."""
    import tifffile

    t = frames.shape[0]
    big = int(np.prod(frames.shape)) * np.dtype(frames.dtype).itemsize > 2**31
    tmp = dest.with_name(dest.name + ".partial")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=big) as tw:
            for t0 in range(0, t, block):
                for f in np.asarray(frames[t0 : t0 + block]):
                    tw.write(f, contiguous=True, photometric="minisblack")  # one series of T pages
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest


def _window(frames, window):
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
    else:
        t = frames.shape[0]
        idx = np.unique(np.linspace(0, t - 1, min(t, 8)).astype(int))
        sample = np.concatenate([np.asarray(frames[i], dtype=np.float64).ravel() for i in idx])
        sample = sample[np.isfinite(sample)]
        lo, hi = (np.percentile(sample, [0.5, 99.5]) if sample.size else (0.0, 1.0))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _to8(f, lo, hi):
    g = (np.nan_to_num(np.asarray(f, dtype=np.float64), nan=lo) - lo) / (hi - lo)
    return (np.clip(g, 0, 1) * 255).round().astype(np.uint8)


def write_preview(frames, dest: Path, *, window=None, fps: float = 20.0, left=None, block: int = 16) -> Path:
    """An 8-bit preview video (``.mp4`` H.264 or ``.gif``); with ``left`` the raw input shown beside it."""
    import imageio.v3 as iio

    lo, hi = _window(frames, window)
    llo, lhi = _window(left, None) if left is not None else (0, 1)
    t = frames.shape[0]
    if left is not None and left.shape[0] != t:
        raise DataError("side-by-side needs the raw and processed videos to have the same number of frames")
    tmp = dest.with_name(dest.stem + ".partial" + dest.suffix)

    def blocks():
        for t0 in range(0, t, block):
            f = _to8(frames[t0 : t0 + block], lo, hi)
            if left is not None:
                f = np.concatenate([_to8(left[t0 : t0 + block], llo, lhi), f], axis=2)
            yield f

    if dest.suffix.lower() == ".mp4":  # streamed frame by frame
        with iio.imopen(tmp, "w", plugin="pyav") as out:
            out.init_video_stream("libx264", fps=fps)
            for f in blocks():
                h, w = f.shape[1:]
                for frame in f[:, : h - h % 2, : w - w % 2]:  # H.264 wants even sizes
                    out.write_frame(np.repeat(frame[..., None], 3, axis=-1))
    else:  # GIF: a short preview, written at once
        iio.imwrite(tmp, np.concatenate(list(blocks())), extension=".gif", duration=1000.0 / fps, loop=0)
    tmp.replace(dest)
    return dest
