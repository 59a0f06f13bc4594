"""The simulator's scene (:mod:`pipeline.simulator`): a slanted edge and line-pair bars rendered in closed form
(each pixel the exact integral, over its area, of the absorbance convolved with the screen's LSF) and a circuit
board that slides along x, rendered per frame (pixel-area integrated, unblurred). Pure NumPy.
"""

from __future__ import annotations

import math

import numpy as np

from .screen import _box_profile, _overlap, pixel_esf


class _Scene:
    """The static absorbance (closed form) and the moving board (per frame).

    Parameters
    ----------
    spec : pipeline.simulator.SimulationSpec
        The frame size, pixel pitch, edge angle, transmissions and board speed.
    det : pipeline.simulator._Detector
        The recording's detector: its LSF (``sigma``, ``w``, ``lam``, pixels) blurs the static scene.
    """

    def __init__(self, spec, det):
        h, w = spec.height, spec.width
        s, tw, lam = det.sigma, det.w, det.lam
        ys = np.arange(h, dtype=np.float64)
        xs = np.arange(w, dtype=np.float64)
        self.attrs: dict = {}

        # slanted edge: plate on the right of a near-vertical line through the region centre
        y0, y1, x0, x1 = int(0.06 * h), int(0.52 * h), int(0.04 * w), int(0.48 * w)
        theta = math.radians(spec.edge_angle_deg)
        yc, xc = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
        nx, ny = math.cos(theta), -math.sin(theta)
        d = (xs[None, :] - xc) * nx + (ys[:, None] - yc) * ny
        edge = pixel_esf(d, abs(nx), abs(ny), s, tw, lam)
        win = (_box_profile(ys, y0 - 0.5, y1 - 0.5, s, tw, lam)[:, None]
               * _box_profile(xs, x0 - 0.5, x1 - 0.5, s, tw, lam)[None, :])
        absorb = (1.0 - spec.edge_transmission) * edge * win
        self.attrs["edge"] = {
            "region_yx": [y0, y1, x0, x1],
            "center_yx": [yc, xc],
            "normal_xy": [nx, ny],
            "angle_deg": spec.edge_angle_deg,
            "transmission": spec.edge_transmission,
            "note": "absorbing plate where (x - xc) * nx + (y - yc) * ny > 0; angle from the vertical (columns)",
        }

        # line-pair bars: vertical bars, groups of 3 line pairs, greedy rows from fine to coarse
        by0, by1, bx0, bx1 = int(0.06 * h), int(0.52 * h), int(0.52 * w), int(0.96 * w)
        candidates = [25, 20, 18, 16, 15, 14, 12, 10, 8, 6, 5, 4, 3, 2, 1.5, 1]
        nyq = 0.5 / spec.pixel_pitch_mm
        rows = 2
        row_h = (by1 - by0) / rows
        groups = []
        row, cursor = 0, float(bx0)
        for f in candidates:
            if f > 0.9 * nyq:
                continue
            bw = 0.5 / f / spec.pixel_pitch_mm  # bar width, pixels
            gap = max(4.0, 2 * bw)
            if cursor + 5 * bw > bx1:
                row += 1
                cursor = float(bx0)
                if row >= rows or cursor + 5 * bw > bx1:
                    break
            gy0 = by0 + row * row_h + 0.1 * row_h
            gy1 = gy0 + 0.8 * row_h
            prof_y = _box_profile(ys, gy0 - 0.5, gy1 - 0.5, s, tw, lam)
            prof_x = np.zeros(w)
            for i in range(3):
                lo = cursor + 2 * i * bw - 0.5
                prof_x += _box_profile(xs, lo, lo + bw, s, tw, lam)
            absorb += (1.0 - spec.bar_transmission) * prof_y[:, None] * prof_x[None, :]
            groups.append({"lp_per_mm": f, "bar_width_px": bw, "region_yx": [gy0, gy1, cursor, cursor + 5 * bw]})
            cursor += 5 * bw + gap
        self.attrs["bars"] = {"transmission": spec.bar_transmission, "groups": groups,
                              "note": "3 absorbing bars per group, bar width = space width = 1/(2 f)"}
        self.static = absorb.astype(np.float32)

        # sliding circuit board (rectangles only: board, pads, traces), moves along x
        my0, my1, mx0, mx1 = int(0.58 * h), int(0.94 * h), int(0.04 * w), int(0.96 * w)
        bh, bwid = 0.8 * (my1 - my0), 0.35 * (mx1 - mx0)
        top = my0 + 0.1 * (my1 - my0)
        rects = [(top, top + bh, 0.0, bwid, 0.3)]  # (y0, y1, x0, x1, absorbance) relative to board x
        for i in range(3):
            for j in range(4):
                py = top + (0.15 + 0.25 * i) * bh
                px = (0.1 + 0.22 * j) * bwid
                rects.append((py, py + 0.12 * bh, px, px + 0.1 * bwid, 0.4))
        for i in range(2):
            ty = top + (0.26 + 0.25 * i) * bh
            rects.append((ty, ty + max(2.0, 0.02 * bh), 0.05 * bwid, 0.95 * bwid, 0.3))
        self.rects = rects
        self.travel = (mx0, mx1 - bwid)
        self.ys, self.xs = ys, xs
        self.attrs["board"] = {"region_yx": [my0, my1, mx0, mx1], "width_px": bwid, "absorbance": 0.3,
                               "speed_px_per_frame": spec.speed_px_per_frame,
                               "note": "slides back and forth along x (triangle wave)"}

    def board_x(self, k: int, speed: float) -> float:
        lo, hi = self.travel
        span = max(hi - lo, 1e-9)
        pos = (speed * k) % (2 * span)
        return lo + (pos if pos <= span else 2 * span - pos)

    def board(self, k: int, speed: float, shape) -> np.ndarray:
        """Unblurred, pixel-area-integrated absorbance of the board at frame k."""
        out = np.zeros(shape, dtype=np.float32)
        x_off = self.board_x(k, speed)
        for y0, y1, x0, x1, c in self.rects:
            ya, yb = max(int(math.floor(y0)), 0), min(int(math.ceil(y1)) + 1, shape[0])
            xa, xb = max(int(math.floor(x0 + x_off)), 0), min(int(math.ceil(x1 + x_off)) + 1, shape[1])
            if ya >= yb or xa >= xb:
                continue
            oy = _overlap(self.ys[ya:yb], y0 - 0.5, y1 - 0.5)
            ox = _overlap(self.xs[xa:xb], x0 + x_off - 0.5, x1 + x_off - 0.5)
            out[ya:yb, xa:xb] += np.float32(c) * (oy[:, None] * ox[None, :]).astype(np.float32)
        return out
