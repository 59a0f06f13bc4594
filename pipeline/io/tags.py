"""A recording's own metadata, read from its file's tags: pixel pitch and frame rate.

Only tags that state a physical unit are trusted: TIFF's ImageJ description (``unit`` with the X resolution,
``finterval``), OME-XML (``PhysicalSizeX`` with its unit, ``TimeIncrement``), a TIFF X resolution in pixels per
centimetre, and NeXus/NXtomo's ``instrument/detector/x_pixel_size`` (with its ``units`` attribute, metres when
absent, as NeXus defines). A TIFF resolution in pixels per inch is left out: cameras write 72 or 96 dpi whatever
their pixels are. Each value comes back with where it was found, ``{'pixel_pitch_mm': (0.05, 'TIFF ImageJ tags')}``.
"""

from __future__ import annotations

import re

#: millimetres per unit, for the unit names TIFF/ImageJ/OME/NeXus write
_MM = {"m": 1e3, "meter": 1e3, "metre": 1e3, "cm": 10.0, "centimeter": 10.0, "mm": 1.0, "millimeter": 1.0,
       "um": 1e-3, "µm": 1e-3, "\u00b5m": 1e-3, "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3,
       "micrometre": 1e-3, "\\u00b5m": 1e-3, "nm": 1e-6, "nanometer": 1e-6}
#: seconds per unit, for OME's TimeIncrementUnit
_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "min": 60.0, "h": 3600.0}


def _mm(value, unit) -> float | None:
    try:
        v = float(value) * _MM[str(unit).strip().lower()]
    except (KeyError, TypeError, ValueError):
        return None
    return v if 0 < v < 1e3 else None


def _rational(v) -> float | None:
    try:
        return float(v[0]) / float(v[1]) if isinstance(v, tuple) else float(v)
    except (TypeError, ValueError, ZeroDivisionError, IndexError):
        return None


def tiff_metadata(tif) -> dict:
    """Pixel pitch and frame rate from an open ``tifffile.TiffFile``'s tags (see the module docstring)."""
    out: dict = {}
    try:
        page = tif.pages[0]
        xres = _rational(page.tags["XResolution"].value) if "XResolution" in page.tags else None
        unit_tag = page.tags["ResolutionUnit"].value if "ResolutionUnit" in page.tags else None
        ij = tif.imagej_metadata or {}
        ome = tif.ome_metadata if tif.is_ome else None
    except Exception:  # tags we cannot read are tags we do not use
        return out
    if ij:
        unit = ij.get("unit")
        if xres and unit is not None and _mm(1.0 / xres, unit):
            out["pixel_pitch_mm"] = (_mm(1.0 / xres, unit), "TIFF ImageJ tags (unit and X resolution)")
        fi = _rational(ij.get("finterval"))
        if fi and fi > 0:
            out["frame_rate_hz"] = (1.0 / fi, "TIFF ImageJ tags (finterval)")
    if ome:
        out.update({k: v for k, v in _ome(ome).items() if k not in out})
    if "pixel_pitch_mm" not in out and xres and int(getattr(unit_tag, "value", unit_tag) or 0) == 3:  # centimetre
        pitch = _mm(1.0 / xres, "cm")
        if pitch:
            out["pixel_pitch_mm"] = (pitch, "TIFF resolution tags (pixels per cm)")
    return out


def _ome(xml: str) -> dict:
    out = {}
    m = re.search(r"<Pixels\b[^>]*>", xml)
    if not m:
        return out
    tag = m.group(0)

    def attr(name):
        a = re.search(rf'\b{name}="([^"]*)"', tag)
        return a.group(1) if a else None

    size = attr("PhysicalSizeX")
    if size is not None:
        pitch = _mm(size, attr("PhysicalSizeXUnit") or "µm")  # OME's default unit is the micrometre
        if pitch:
            out["pixel_pitch_mm"] = (pitch, "TIFF OME-XML (PhysicalSizeX)")
    dt = attr("TimeIncrement")
    if dt is not None:
        try:
            s = float(dt) * _S.get(attr("TimeIncrementUnit") or "s", 0.0)
        except ValueError:
            s = 0.0
        if s > 0:
            out["frame_rate_hz"] = (1.0 / s, "TIFF OME-XML (TimeIncrement)")
    return out


def nexus_metadata(f, dataset: str) -> dict:
    """Pixel pitch from an open HDF5 file's NXtomo ``instrument/detector/x_pixel_size`` near ``dataset``."""
    entry = "/" + dataset.strip("/").split("/")[0]
    for cand in (f"{entry}/instrument/detector/x_pixel_size", "/entry/instrument/detector/x_pixel_size"):
        if cand not in f:
            continue
        try:
            node = f[cand]
            value = float(node[()]) if node.shape in ((), (1,)) else None
            unit = node.attrs.get("units", "m")
            unit = unit.decode() if isinstance(unit, bytes) else unit
        except Exception:
            continue
        pitch = _mm(value, unit) if value else None
        if pitch:
            return {"pixel_pitch_mm": (pitch, f"NeXus {cand}")}
    return {}


def as_attrs(found: dict) -> dict:
    """``found`` (name -> (value, where)) as dataset attributes: the values, and ``metadata_sources``."""
    if not found:
        return {}
    return {**{k: float(v) for k, (v, _) in found.items()},
            "metadata_sources": {k: where for k, (_, where) in found.items()}}

