"""One typed configuration schema for the command line, YAML files and Python.

:class:`RunConfig` is frozen and validated by pydantic. Unknown keys, wrong
types, numbers that are not finite (NaN, inf) or out of their physical range,
and booleans given for numbers raise :class:`~pipeline.errors.ConfigError` with
a one-line message naming the dotted key, e.g. ``config key 'flatfield.outptu'
is unknown`` or ``config key 'output.offset': input should be a finite number
(got nan)``. Sizes bounded by the frame size are checked once the input is open
(:func:`pipeline.validate.check_sizes`).

Use :func:`load_config` to build a config from a YAML file, a mapping, CLI
``--set key=value`` overrides, or any mix of them (later ones win).
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from .errors import ConfigError


def _takes_bool(annotation) -> bool:
    """True if a field's annotation admits a bool (``bool``, ``bool | None``, ...)."""
    if annotation is bool:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_takes_bool(a) for a in typing.get_args(annotation))
    return False


class _Section(BaseModel):
    # every number must be finite (NaN, inf and -inf refused: a NaN offset turned every output value into NaN) and
    # a bool is never a number (YAML reads yes/true as True, which pydantic would take as 1)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v, info: ValidationInfo):
        field = cls.model_fields.get(info.field_name)
        if field is None or _takes_bool(field.annotation):
            return v
        if isinstance(v, bool) or (isinstance(v, (list, tuple)) and any(isinstance(x, bool) for x in v)):
            raise PydanticCustomError("bool_number", "must be a number, not true/false")
        return v


class BadPixelConfig(_Section):
    """Bad-pixel detection (ASTM E2597 classes) and replacement."""

    detect: bool = True
    dead_below: float = Field(0.1, gt=0, lt=1, description="flat response / local median below this: dead")
    under_below: float = Field(0.7, gt=0, lt=1, description="... below this: under-responding")
    over_above: float = Field(1.3, gt=1, description="... above this: over-responding")
    hot_sigma: float = Field(10.0, gt=0, description="dark level above local median by this many robust sigmas: hot")
    noisy_factor: float = Field(3.0, gt=1, description="temporal dark noise / median dark noise above this: noisy")
    # <= 127: the window must follow the local shading to stay "local" (ASTM E2597 practice uses ~9-31 px) and the
    # sliding median costs O(window) per pixel; validate.check_sizes also bounds it by the frame
    window: int = Field(9, ge=3, le=127, description="odd side of the local-median window, pixels")
    replace: bool = Field(True, description="replace bad pixels by the median of good neighbours")

    @field_validator("window")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd")
        return v


class FlatFieldConfig(_Section):
    """Dark subtraction, gain (flat-field) normalisation, bad pixels, saturation."""

    enabled: bool = True
    dark_statistic: Literal["mean", "median"] = "mean"
    flat_statistic: Literal["mean", "median"] = "mean"
    flat_exposure_ratio: float = Field(
        1.0, gt=0, description="exposure of the frames divided by the exposure of the flats"
    )
    output: Literal["counts", "transmission", "attenuation"] = "counts"
    saturation_level: float | None = Field(
        None, gt=0, description="raw level at or above which a pixel is saturated; None: dtype maximum for integers"
    )
    saturated: Literal["nan", "keep"] = "nan"
    response: str | None = Field(
        None, description="pixel_response.npy from 'xray-pipeline characterise': linearise a non-linear screen")
    bad_pixels: BadPixelConfig = BadPixelConfig()


class AfterglowConfig(_Section):
    """Afterglow / lag removal with a fitted model (``xray-pipeline afterglow fit``); on when ``model`` is set."""

    model: str | None = Field(None, description="MODEL.json from 'xray-pipeline afterglow fit'; null: stage off")
    initial_state: Literal["steady", "zero"] = Field(
        "steady", description="lag before frame 0: steady (scene static before recording) or zero (beam just switched on)"
    )
    check_frame_rate: bool = Field(True, description="refuse a model fitted at another frame rate than the data's")


class DenoiseConfig(_Section):
    """Low-dose denoising: a motion-adaptive temporal filter and/or a spatial filter (per frame)."""

    enabled: bool = False
    # guided: +6.7 dB at 100 quanta/px with the temporal filter, ~60x the frames/s of nlm (+7.5 dB), the quality
    # option; benchmarks/results/denoise_methods_cpu.md
    method: Literal["none", "median", "gaussian", "bilateral", "tv", "nlm", "guided"] = Field(
        "guided", description="spatial denoiser applied to every frame (after the temporal filter); "
                              "guided: fast (the default), nlm: best quality")
    anscombe: bool = Field(True, description="run the spatial denoiser inside the generalised Anscombe transform")
    temporal: bool = Field(True, description="motion-adaptive recursive temporal filter")
    temporal_gain_min: float = Field(0.1, gt=0, le=1, description="gain where the scene is still (noise variance x K/(2-K))")
    temporal_threshold: tuple[float, float] = Field((1.5, 3.0), description="motion in noise sigmas: gain rises from min to 1")
    # <= 63: a larger box averages away the motion of anything smaller than it, and the filters sum `smooth` rows
    # per pixel (100001 ran > 15 min on 32 frames of 64 x 64); validate.check_sizes also bounds it by the frame
    temporal_smooth: int = Field(3, ge=1, le=63,
                                 description="box size over which the frame difference is averaged for motion")
    temporal_hold: float = Field(0.5, ge=0, lt=1, description="a moved pixel keeps at least this fraction of last gain")
    noise_model: tuple[float, float] | None = Field(None, description="[alpha, beta] of var = alpha*mean + beta; null: estimated")
    noise_frames: int = Field(8, ge=1, description="frames at the start used to estimate the noise model")
    # Absolute caps on the spatial sizes, far beyond any useful denoiser and before the cost explodes; the main guard
    # is validate.check_sizes against the frame size. A median beyond ~9 px and a Gaussian beyond ~5 px blur rather
    # than denoise (31 and 32: generous); the bilateral filter visits (4 sigma + 1)^2 neighbours per pixel (16: 4225);
    # non-local means compares (2 search + 1)^2 patches per pixel: Buades et al. use a 21 x 21 window (radius 10) and
    # 7 x 7 patches, 64 (16641 patches per pixel) and 31 are several times that.
    median_size: int = Field(3, ge=3, le=31)
    gaussian_sigma: float = Field(1.0, gt=0, le=32, description="pixels")
    bilateral_sigma_spatial: float = Field(2.0, gt=0, le=16, description="pixels")
    bilateral_sigma_range: float = Field(2.0, gt=0, description="in noise sigmas (inside the GAT: absolute)")
    tv_weight: float = Field(1.0, gt=0)
    nlm_h: float = Field(0.8, gt=0)
    nlm_patch: int = Field(5, ge=3, le=31, description="patch side, pixels")
    nlm_search: int = Field(3, ge=1, le=64, description="search radius, pixels")
    # the guided filter costs the same at any radius (box sums); 64 is far beyond a useful box
    guided_radius: int = Field(8, ge=1, le=64, description="box radius of the guided filter, pixels")
    guided_eps: float = Field(0.4, gt=0, description="guided filter: local variance below which it smooths, in noise "
                                                     "variances (inside the GAT: absolute)")

    @field_validator("temporal_threshold")
    @classmethod
    def _ordered(cls, v):
        if not 0 <= v[0] < v[1]:
            raise ValueError("must be two increasing numbers >= 0")
        return v

    @field_validator("noise_model")
    @classmethod
    def _positive_variance(cls, v):
        # var = alpha * mean + beta. alpha is the gain (counts per quantum): never negative. beta may be negative (a
        # pedestal: var = alpha (mean - p) + s^2 gives beta = s^2 - alpha p), since with alpha > 0 the variance is
        # positive above -beta / alpha; with alpha = 0 (pure Gaussian noise) beta is the variance and must be > 0,
        # or the Anscombe transform divides by zero
        if v is None:
            return v
        alpha, beta = v
        if alpha < 0:
            raise PydanticCustomError("noise_model", "alpha (the gain, first value) must be >= 0, not {alpha}",
                                      {"alpha": alpha})
        if alpha == 0 and beta <= 0:
            raise PydanticCustomError("noise_model", "with alpha = 0 (pure Gaussian noise) beta (the variance, second "
                                                     "value) must be > 0, not {beta}", {"beta": beta})
        return v


class BeamConfig(_Section):
    """Beam-intensity normalisation: each frame scaled so that its mean over an open-beam region is the reference
    (a flickering or drifting source); after afterglow removal, before the temporal filter."""

    enabled: bool = False
    region: tuple[int, int, int, int] | None = Field(
        None, description="Y0 Y1 X0 X1 of an area the beam reaches unobstructed in every frame (needed when enabled)")
    reference: float | None = Field(
        None, gt=0, description="level every frame's region mean is brought to; null: the median of the region's "
                                "means over the first reference_frames readable frames (once per run)")
    reference_frames: int = Field(8, ge=1, le=10000, description="frames at the start the reference comes from")

    @field_validator("region")
    @classmethod
    def _ordered_region(cls, v):
        if v is not None and not (0 <= v[0] < v[1] and 0 <= v[2] < v[3]):
            raise ValueError("must be Y0 Y1 X0 X1 with 0 <= Y0 < Y1 and 0 <= X0 < X1")
        return v


class MTFConfig(_Section):
    """Per-frame slanted-edge MTF of the corrected frames (stored under ``mtf/`` in the output)."""

    enabled: bool = False
    roi: tuple[int, int, int, int] | None = Field(None, description="Y0 Y1 X0 X1; null: found on the first frame")
    window: Literal["tukey", "hann", "none"] = "tukey"
    oversample: int = Field(4, ge=2, le=16)
    f_max_cy_per_px: float = Field(1.0, gt=0, le=2.0, description="highest frequency stored (Nyquist is 0.5)")


class ExecutionConfig(_Section):
    """How the work is scheduled."""

    LOCAL_SCHEDULERS: ClassVar[tuple[str, ...]] = ("threads", "synchronous", "processes")
    _ADDRESS: ClassVar[re.Pattern] = re.compile(
        r"(tcp|tls|ucx|ws|wss)://([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?")

    device: Literal["cpu", "gpu", "auto"] = "cpu"
    chunk_frames: int | Literal["auto"] = "auto"
    chunk_bytes: int = Field(64 * 2**20, gt=0, description="target bytes of one float32 block when chunk_frames is auto")
    scheduler: str = Field(
        "threads", description="threads | synchronous | processes (Dask local schedulers), or the address of a "
                               "running dask.distributed scheduler, e.g. tcp://host:8786")
    cluster: Literal["none", "local", "local-cuda"] = Field(
        "none", description="start a dask.distributed cluster for the run: local (LocalCluster, num_workers worker "
                            "processes) or local-cuda (dask_cuda.LocalCUDACluster, one worker per GPU)")
    num_workers: int | None = Field(
        None, ge=1, description="threads or processes of a local scheduler, worker processes of cluster: local, "
                                "GPUs used by local-cuda; null: one per core (per GPU)")
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="a corrupt or missing input chunk: fail naming the frames, or skip (NaN, recorded)")
    check_missing_chunks: bool | Literal["auto"] = Field(
        "auto", description="an absent chunk file of the input is a lost chunk (true) or the fill value (false, as "
                            "the Zarr spec reads data written with write_empty_chunks=False); auto: lost where "
                            "xray-pipeline wrote the dataset (it stores every chunk), the fill value elsewhere")

    @field_validator("chunk_frames")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return v

    @classmethod
    def is_address(cls, value) -> bool:
        """True if ``value`` looks like the address of a dask.distributed scheduler.

        Parameters
        ----------
        value : object
            E.g. ``tcp://10.0.0.5:8786`` or ``tls://scheduler.example.org:8786``.

        Returns
        -------
        bool
            ``scheme://host[:port]`` with a scheme Dask's comms know (tcp, tls, ucx, ws, wss).
        """
        return isinstance(value, str) and cls._ADDRESS.fullmatch(value) is not None

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        if v in cls.LOCAL_SCHEDULERS or cls.is_address(v):
            return v
        raise PydanticCustomError("scheduler", "must be threads, synchronous, processes or a dask.distributed "
                                               "scheduler address such as tcp://host:8786")

    @field_validator("cluster", mode="before")
    @classmethod
    def _cluster_null(cls, v):
        return "none" if v is None else v  # YAML null reads as 'none'

    @field_validator("cluster")
    @classmethod
    def _cluster_alone(cls, v: str, info: ValidationInfo) -> str:
        scheduler = info.data.get("scheduler", "threads")
        if v != "none" and scheduler != "threads":
            raise PydanticCustomError(
                "cluster", "starts its own cluster: leave execution.scheduler at threads (it is '{scheduler}') "
                           "or set cluster: none", {"scheduler": _show(scheduler)[:60]})
        return v


class InputConfig(_Section):
    """What the recording's files may not say: below the command line, above the file's own tags."""

    pixel_pitch_mm: float | None = Field(None, gt=0, le=10, description="mm at the scintillator plane; null: from "
                                         "--pixel-pitch, the file's tags or the dataset's pixel_pitch_mm")
    frame_rate_hz: float | None = Field(None, gt=0, le=1e7, description="Hz; null: from --frame-rate, the file's "
                                        "tags or the dataset's frame_rate_hz")


class OutputConfig(_Section):
    """How the output Zarr array is written."""

    codec: Literal["bitshuffle-lz4", "zstd", "lz4", "none"] = Field(
        "bitshuffle-lz4", description="bitshuffle-lz4: Blosc LZ4 after a bit shuffle, the usual choice for detector "
                                      "frames (float32 frames 1.58x smaller, zstd 1.26x, at a similar speed)")
    level: int = Field(1, ge=0, le=22)
    chunk_frames: int | None = Field(
        None, ge=1, description="frames per stored chunk (what a viewer decodes to show one frame); null: from the "
                                "frame size, as ingest (up to 16 frames within 32 MiB); always a divisor of the "
                                "processing block")
    dtype: Literal["float32", "float16", "uint16"] = Field(
        "float32", description="storage type of the corrected frames: float32 exact; float16 and uint16 half the "
                               "bytes (and half the GPU download)")
    scale: float | None = Field(
        None, gt=0, description="uint16 only: stored = round(value * scale + offset), clipped to 1..65535, NaN -> 0 "
                                "(CF scale_factor = 1/scale); null: 1 for counts, 50000 transmission, 10000 attenuation")
    offset: float | None = Field(
        None, ge=0, lt=65535, description="uint16 only (0 <= offset < 65535): added after scaling (room for values "
                                          "below zero); null: 100 for counts, 500 transmission, 1000 attenuation")


class RunConfig(_Section):
    """The whole run: the input's metadata, one section per stage, execution and output."""

    input: InputConfig = InputConfig()
    flatfield: FlatFieldConfig = FlatFieldConfig()
    afterglow: AfterglowConfig = AfterglowConfig()
    beam: BeamConfig = BeamConfig()
    denoise: DenoiseConfig = DenoiseConfig()
    mtf: MTFConfig = MTFConfig()
    execution: ExecutionConfig = ExecutionConfig()
    output: OutputConfig = OutputConfig()


def _show(text) -> str:
    """Text safe for a one-line message (newlines and control characters escaped)."""
    return str(text).encode("unicode_escape").decode("ascii")


def _one_line(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line per bad key: union branches are folded into one message."""
    by_key: dict[str, list[str]] = {}
    for err in exc.errors():
        parts, m = [], model
        for p in err["loc"]:
            fields = getattr(m, "model_fields", None)
            if fields is None or p not in fields:
                if err["type"] == "extra_forbidden" and p == err["loc"][-1]:
                    parts.append(str(p))
                break
            parts.append(str(p))
            m = fields[p].annotation
        key = _show(".".join(parts))
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, err["loc"][:-1])
            hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
            by_key.setdefault(key, []).append(f"is unknown{hint}")
            continue
        got = err.get("input")
        got_s = f" (got {_show(repr(got))[:60]})" if not isinstance(got, (dict, list)) else ""
        msg = _show(err["msg"][0].lower() + err["msg"][1:])
        by_key.setdefault(key, []).append(f"{msg}{got_s}")
    out = []
    for key, msgs in by_key.items():
        if msgs[0].startswith("is unknown"):
            out.append(f"config key '{key}' {msgs[0]}")
        else:
            out.append(f"config key '{key}': " + " or ".join(dict.fromkeys(msgs)))
    return "; ".join(out)


def _allowed_keys(model: type[BaseModel], loc) -> list[str]:
    m: Any = model
    for part in loc:
        field = getattr(m, "model_fields", {}).get(part)
        if field is None:
            return []
        m = field.annotation
    return sorted(getattr(m, "model_fields", {}).keys())


def _deep_merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(item: str) -> dict:
    """Turn ``'a.b.c=value'`` into ``{'a': {'b': {'c': value}}}`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override '{_show(item)}' must look like section.key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{_show(item)}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    out: Any = value
    for p in reversed(parts):
        out = {p: out}
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a mapping (empty file: empty mapping)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist; pass an existing YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, ValueError) as exc:  # a binary file
        raise ConfigError(f"config file '{p}' is not a text (UTF-8) YAML file ({type(exc).__name__}); pass a YAML "
                          "config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{p}' is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of sections, not {type(data).__name__}")
    return data


#: config keys that name files: relative paths in a YAML file are relative to the file's folder
PATH_KEYS = (("flatfield", "response"), ("afterglow", "model"))


def _relative_to(data: dict, folder: Path) -> dict:
    """``data`` with its relative file paths (:data:`PATH_KEYS`) made relative to ``folder``."""
    out = dict(data)
    for section, key in PATH_KEYS:
        sec = out.get(section)
        if isinstance(sec, Mapping) and isinstance(sec.get(key), str) and sec[key].strip():
            value = Path(sec[key]).expanduser()
            if not value.is_absolute():
                out[section] = {**sec, key: str(folder / value)}
    return out


def load_config(
    source: "RunConfig | Mapping | str | Path | None" = None,
    *,
    overrides: "Mapping | list[str] | None" = None,
) -> RunConfig:
    """Build a validated :class:`RunConfig`.

    Parameters
    ----------
    source : RunConfig, mapping, path or None
        A ready config, a mapping of sections, or a YAML file. ``None`` gives
        the defaults (the same values as ``configs/default.yaml``). A YAML
        file's relative file paths (``afterglow.model``, ``flatfield.response``)
        are relative to the file's folder; ``overrides``' to the working folder.
    overrides : mapping or list of str, optional
        Applied on top: a nested mapping or CLI-style ``"section.key=value"``
        strings.

    Raises
    ------
    ConfigError
        Naming the first bad key, e.g. ``config key 'flatfield.outptu' is unknown``.
    """
    if isinstance(source, RunConfig):
        data = source.model_dump()
    elif source is None:
        data = {}
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        data = _relative_to(read_yaml(source), Path(source).resolve().parent)
    if overrides:
        items = [parse_override(o) for o in overrides] if isinstance(overrides, list) else [overrides]
        for item in items:
            data = _deep_merge(data, item)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, RunConfig)) from None


def dump_yaml(config: RunConfig) -> str:
    """The fully resolved config as YAML text (what ``configs/default.yaml`` holds for defaults)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
