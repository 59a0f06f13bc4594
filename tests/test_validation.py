"""Every number is validated where it enters (config, dataset attributes, arguments, calibration data): finite and
in its physical range, or a one-line error that names the thing and says the fix. Each case here was accepted
before (exit status 0) and destroyed the output."""

import shutil
import typing

import numpy as np
import pytest
import zarr
from pydantic import BaseModel

import pipeline
from pipeline.config import RunConfig, load_config
from pipeline.errors import CalibrationError, ConfigError, DataError
from pipeline.ops.flatfield import compute_calibration


def _one_line(excinfo, *needles) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg and msg, repr(msg)
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


# --------------------------------------------------------------------------- config: finite and in range
@pytest.mark.parametrize("item,key", [
    ("output.offset=.nan", "output.offset"),
    ("output.scale=.inf", "output.scale"),
    ("flatfield.flat_exposure_ratio=.inf", "flatfield.flat_exposure_ratio"),
    ("flatfield.saturation_level=.nan", "flatfield.saturation_level"),
    ("denoise.noise_model=[.nan, .nan]", "denoise.noise_model"),
])
def test_config_refuses_nan_and_inf(item, key):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[item])
    msg = _one_line(e, f"config key '{key}'", "finite")
    assert msg.count("config key") == 1


def _numeric_leaves(model: type[BaseModel], prefix: str = ""):
    """(dotted key, arity) of every int/float field (arity: 0 scalar, n a tuple of n numbers)."""
    for name, f in model.model_fields.items():
        ann, key = f.annotation, f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _numeric_leaves(ann, key + ".")
            continue
        args = typing.get_args(ann) or (ann,)
        tup = [a for a in args if typing.get_origin(a) is tuple]
        if tup:
            yield key, len(typing.get_args(tup[0]))
        elif any(a in (int, float) for a in args):
            yield key, 0


NUMERIC = list(_numeric_leaves(RunConfig))


def test_the_schema_walk_found_the_numbers():
    keys = {k for k, _ in NUMERIC}
    assert {"output.offset", "output.scale", "denoise.noise_model", "flatfield.bad_pixels.window",
            "denoise.temporal_threshold", "mtf.roi", "execution.chunk_bytes"} <= keys


@pytest.mark.parametrize("key,arity", NUMERIC, ids=[k for k, _ in NUMERIC])
@pytest.mark.parametrize("bad", [".nan", ".inf", "-.inf"])
def test_every_numeric_key_refuses_nan_and_inf(key, arity, bad):
    value = bad if arity == 0 else "[" + ", ".join([bad] + ["1"] * (arity - 1)) + "]"
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"{key}={value}"])
    _one_line(e, f"config key '{key}'")


@pytest.mark.parametrize("item,key", [
    ("denoise.nlm_search=true", "denoise.nlm_search"),
    ("output.offset=true", "output.offset"),
    ("denoise.noise_model=[true, 1]", "denoise.noise_model"),
    ("flatfield.saturation_level=yes", "flatfield.saturation_level"),
])
def test_config_refuses_a_bool_for_a_number(item, key):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[item])
    _one_line(e, f"config key '{key}'", "number")


@pytest.mark.parametrize("value", ["-1", "0"])
def test_saturation_level_must_be_positive(value):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"flatfield.saturation_level={value}"])
    _one_line(e, "config key 'flatfield.saturation_level'", "greater than 0")
    assert load_config(overrides=["flatfield.saturation_level=4095"]).flatfield.saturation_level == 4095


@pytest.mark.parametrize("value", ["-1", "65535", "1e6"])
def test_output_offset_within_uint16(value):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"output.offset={value}"])
    _one_line(e, "config key 'output.offset'")
    for ok in ("0", "100", "65534.5"):
        load_config(overrides=[f"output.offset={ok}"])


@pytest.mark.parametrize("value", ["0", "-2"])
def test_output_scale_positive(value):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"output.scale={value}"])
    _one_line(e, "config key 'output.scale'")


@pytest.mark.parametrize("model,fragment", [
    ("[-1, 4]", "alpha"),  # negative gain: variance falls with signal
    ("[0, 0]", "beta"),  # no noise anywhere: the GAT divides by zero
    ("[0, -3]", "beta"),
])
def test_noise_model_variance_positive(model, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"denoise.noise_model={model}"])
    _one_line(e, "config key 'denoise.noise_model'", fragment)
    # a Poisson gain with a pedestal (negative beta) and pure Gaussian noise are both physical
    assert load_config(overrides=["denoise.noise_model=[2.0, -50]"]).denoise.noise_model == (2.0, -50.0)
    assert load_config(overrides=["denoise.noise_model=[0, 4]"]).denoise.noise_model == (0.0, 4.0)


@pytest.mark.parametrize("item,key", [
    ("denoise.nlm_search=100000", "denoise.nlm_search"),
    ("denoise.temporal_smooth=100001", "denoise.temporal_smooth"),
    ("denoise.nlm_patch=1001", "denoise.nlm_patch"),
    ("denoise.median_size=1001", "denoise.median_size"),
    ("denoise.gaussian_sigma=1e4", "denoise.gaussian_sigma"),
    ("denoise.bilateral_sigma_spatial=1e4", "denoise.bilateral_sigma_spatial"),
    ("flatfield.bad_pixels.window=100001", "flatfield.bad_pixels.window"),
])
def test_absolute_caps_on_sizes(item, key):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[item])
    _one_line(e, f"config key '{key}'", "less than or equal")


def test_defaults_and_default_yaml_still_load():
    from pathlib import Path

    assert load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml") == RunConfig()


# --------------------------------------------------------------------------- config against the frame size
def _sized(*items):
    return load_config(overrides=list(items))


@pytest.mark.parametrize("items,shape,key,limit", [
    (["denoise.enabled=true", "denoise.method=nlm", "denoise.nlm_search=40"], (32, 32), "denoise.nlm_search",
     "use at most 31"),
    (["denoise.enabled=true", "denoise.method=nlm", "denoise.nlm_search=40"], (16, 40), "denoise.nlm_search",
     "use at most 39"),
    (["denoise.enabled=true", "denoise.method=nlm", "denoise.nlm_patch=21"], (16, 16), "denoise.nlm_patch",
     "use at most 16"),
    (["denoise.enabled=true", "denoise.temporal_smooth=40"], (32, 32), "denoise.temporal_smooth", "use at most 32"),
    (["denoise.enabled=true", "denoise.method=median", "denoise.median_size=21"], (16, 16), "denoise.median_size",
     "use at most 15"),
    (["denoise.enabled=true", "denoise.method=gaussian", "denoise.gaussian_sigma=20"], (16, 16),
     "denoise.gaussian_sigma", "use at most 16"),
    (["denoise.enabled=true", "denoise.method=bilateral", "denoise.bilateral_sigma_spatial=10"], (16, 16),
     "denoise.bilateral_sigma_spatial", "use at most 7.5"),
    (["flatfield.bad_pixels.window=41"], (32, 32), "flatfield.bad_pixels.window", "use at most 31"),
])
def test_check_sizes_bounds_windows_by_the_frame(items, shape, key, limit):
    from pipeline.validate import check_sizes

    with pytest.raises(ConfigError) as e:
        check_sizes(_sized(*items), shape)
    _one_line(e, f"config key '{key}'", f"the frames are {shape[0]} x {shape[1]}", limit)


def test_check_sizes_message_reads_like_the_rule():
    from pipeline.validate import check_sizes

    with pytest.raises(ConfigError) as e:
        check_sizes(_sized("denoise.enabled=true", "denoise.method=nlm", "denoise.nlm_search=60"), (48, 40))
    assert str(e.value) == ("config key 'denoise.nlm_search' is 60 pixels but the frames are 48 x 40; "
                            "use at most 47")


def test_check_sizes_passes_defaults_and_ignores_stages_that_are_off():
    from pipeline.validate import check_sizes

    check_sizes(RunConfig(), (32, 32))
    check_sizes(_sized("denoise.enabled=true"), (32, 32))
    for m in ("median", "gaussian", "bilateral", "tv", "nlm", "guided"):
        check_sizes(_sized("denoise.enabled=true", f"denoise.method={m}"), (32, 32))
    check_sizes(_sized("denoise.nlm_search=40"), (32, 32))  # denoise off
    check_sizes(_sized("denoise.enabled=true", "denoise.method=tv", "denoise.nlm_search=40"), (32, 32))
    check_sizes(_sized("flatfield.bad_pixels.window=41"), (64, 64))
    check_sizes(_sized("flatfield.bad_pixels.window=41", "flatfield.bad_pixels.detect=false"), (32, 32))
    check_sizes(_sized("flatfield.bad_pixels.window=41", "flatfield.enabled=false"), (32, 32))


def test_check_sizes_tiny_frames_say_how_to_turn_detection_off():
    from pipeline.validate import check_sizes

    with pytest.raises(ConfigError) as e:
        check_sizes(RunConfig(), (2, 100))
    _one_line(e, "config key 'flatfield.bad_pixels.window'", "flatfield.bad_pixels.detect=false")


# --------------------------------------------------------------------------- dataset attributes
@pytest.mark.parametrize("value", [-0.01, 0.0, float("nan"), float("inf"), True, "0.1", 11.0, [0.1]])
def test_pixel_pitch_attribute(value):
    from pipeline.validate import dataset_attrs

    with pytest.raises(DataError) as e:
        dataset_attrs({"pixel_pitch_mm": value}, "rec.zarr")
    _one_line(e, "dataset 'rec.zarr'", "pixel_pitch_mm", "mm", "--pixel-pitch")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0, -50.0, 1e8, False, "50"])
def test_frame_rate_attribute(value):
    from pipeline.validate import dataset_attrs

    with pytest.raises(DataError) as e:
        dataset_attrs({"frame_rate_hz": value}, "rec.zarr")
    _one_line(e, "dataset 'rec.zarr'", "frame_rate_hz", "--frame-rate")


@pytest.mark.parametrize("key", ["q_per_uGy_mm2", "reference_kerma_uGy", "air_kerma_uGy"])
@pytest.mark.parametrize("value", [-5.0, 0.0, float("nan"), float("inf"), True])
def test_characterisation_attributes(key, value):
    from pipeline.validate import dataset_attrs

    with pytest.raises(DataError) as e:
        dataset_attrs({key: value}, "cal.zarr")
    _one_line(e, "dataset 'cal.zarr'", key)


def test_good_attributes_pass_and_come_back_as_floats():
    from pipeline.validate import dataset_attrs

    attrs = {"pixel_pitch_mm": 1, "frame_rate_hz": np.float32(50.0), "q_per_uGy_mm2": 29653,
             "reference_kerma_uGy": 100.0, "beam_quality": "RQA5", "source": "x", "nonfinite_pixels": 3}
    out = dataset_attrs(attrs, "ok.zarr")
    assert out["pixel_pitch_mm"] == 1.0 and type(out["pixel_pitch_mm"]) is float
    assert type(out["frame_rate_hz"]) is float and out["q_per_uGy_mm2"] == 29653.0
    assert out["beam_quality"] == "RQA5" and out["nonfinite_pixels"] == 3
    assert dataset_attrs({}, "empty.zarr") == {}
    assert dataset_attrs({"pixel_pitch_mm": None}, "x") == {"pixel_pitch_mm": None}  # null: unknown, as if absent
    assert attrs["pixel_pitch_mm"] == 1  # the input is not changed


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0.0, True, "abc", None])
def test_positive_finite_argument(value):
    from pipeline.validate import positive_finite

    with pytest.raises(DataError) as e:
        positive_finite(value, "--pixel-pitch", fix="give the pixel pitch in mm, e.g. --pixel-pitch 0.1")
    _one_line(e, "--pixel-pitch", "e.g. --pixel-pitch 0.1")


def test_positive_finite_error_type_upper_and_result():
    from pipeline.validate import positive_finite

    assert positive_finite(np.float32(2.5), "x", fix="f") == 2.5
    assert type(positive_finite(3, "x", fix="f")) is float
    with pytest.raises(ConfigError) as e:
        positive_finite(20.0, "--frame-rate", fix="give it in Hz", error=ConfigError, upper=10)
    _one_line(e, "--frame-rate", "at most 10", "give it in Hz")
    assert positive_finite(10, "x", fix="f", upper=10) == 10.0


def test_calibration_attributes():
    from pipeline.validate import calibration_attrs

    for key in ("flat_level", "exposure_ratio", "lag_dc_gain_removed"):
        with pytest.raises(CalibrationError) as e:
            calibration_attrs({"flat_level": 1000.0, key: float("nan")}, "cal.zarr")
        _one_line(e, "calibration 'cal.zarr'", key, "recompute")
    with pytest.raises(CalibrationError) as e:
        calibration_attrs({"flat_level": -3.0}, "cal.zarr")
    _one_line(e, "flat_level")
    assert calibration_attrs({"flat_level": 1000, "exposure_ratio": 2}, "c")["flat_level"] == 1000.0


# --------------------------------------------------------------------------- characterisation dataset
@pytest.fixture(scope="module")
def char_small(tmp_path_factory):
    d = tmp_path_factory.mktemp("valchar")
    return pipeline.api.simulate_characterisation(d / "c.zarr", size=(64, 64), n_flats=4, n_edge=2, step_frames=30)


@pytest.fixture
def char_copy(char_small, tmp_path):
    dst = tmp_path / "c.zarr"
    shutil.copytree(char_small, dst)
    return dst


def _set(path, attrs, node=""):
    g = zarr.open_group(str(path), mode="r+")
    (g[node] if node else g).attrs.update(attrs)


@pytest.mark.parametrize("value", [-0.01, float("nan"), float("inf"), True, "0.01"])
def test_characterise_refuses_a_bad_pixel_pitch(char_copy, tmp_path, value):
    _set(char_copy, {"pixel_pitch_mm": value})
    with pytest.raises(DataError) as e:
        pipeline.api.characterise(char_copy, tmp_path / "rep")
    _one_line(e, "pixel_pitch_mm", str(char_copy))
    assert not (tmp_path / "rep").exists()


def test_characterise_refuses_a_negative_q(char_copy, tmp_path):
    _set(char_copy, {"q_per_uGy_mm2": -5.0})
    with pytest.raises(DataError) as e:
        pipeline.api.characterise(char_copy, tmp_path / "rep")
    _one_line(e, "q_per_uGy_mm2", "-5")


@pytest.mark.parametrize("value", [float("nan"), -5.0, float("inf")])
def test_characterise_refuses_a_bad_q_argument(char_small, tmp_path, value):
    with pytest.raises(DataError) as e:
        pipeline.api.characterise(char_small, tmp_path / "rep", q_per_ugy_mm2=value)
    _one_line(e, "--q")


def test_characterise_refuses_a_nan_frame_rate(char_copy, tmp_path):
    # a NaN frame rate skipped the afterglow silently before (NaN > 0 is False)
    _set(char_copy, {"frame_rate_hz": float("nan")})
    with pytest.raises(DataError) as e:
        pipeline.api.characterise(char_copy, tmp_path / "rep")
    _one_line(e, "frame_rate_hz")


@pytest.mark.parametrize("value", [float("nan"), -25.0, 0.0, True])
def test_characterise_refuses_a_bad_flat_kerma(char_copy, tmp_path, value):
    _set(char_copy, {"air_kerma_uGy": value}, "flats/level2")
    with pytest.raises(DataError) as e:
        pipeline.api.characterise(char_copy, tmp_path / "rep")
    _one_line(e, "air_kerma_uGy", "flats/level2")


def test_characterise_refuses_a_bad_reference_kerma(char_copy, tmp_path):
    _set(char_copy, {"reference_kerma_uGy": float("nan")})
    with pytest.raises(DataError) as e:
        pipeline.api.characterise(char_copy, tmp_path / "rep")
    _one_line(e, "reference_kerma_uGy")


def test_characterise_refuses_a_saturated_flat_level(char_copy, tmp_path):
    g = zarr.open_group(str(char_copy), mode="r+")
    a = g["flats/level3"]
    a[...] = np.full(a.shape, 65535, dtype=a.dtype)
    with pytest.raises(CalibrationError) as e:
        pipeline.api.characterise(char_copy, tmp_path / "rep")
    _one_line(e, "flats/level3", "saturated", "lower dose")


# --------------------------------------------------------------------------- saturated flats
def _maps(rng, h=48, w=40):
    dark = (100 + 2 * rng.standard_normal((h, w))).astype(np.float32)
    flat = (dark + 20000 * rng.uniform(0.8, 1.2, (h, w))).astype(np.float32)
    return dark, flat


def test_all_saturated_uint16_flats_refused():
    rng = np.random.default_rng(0)
    dark, _ = _maps(rng)
    flat = np.full(dark.shape, 65535, np.uint16)  # raw uint16: the dtype maximum is the saturation level
    with pytest.raises(ValueError) as e:
        compute_calibration(dark, flat)
    _one_line(e, "saturated", "100 %", "lower dose")


def test_all_saturated_float_flats_refused_with_the_level():
    rng = np.random.default_rng(0)
    dark, _ = _maps(rng)
    flat = np.full(dark.shape, 65535.0, np.float32)
    with pytest.raises(ValueError, match="saturated"):
        compute_calibration(dark, flat, saturation_level=65535)
    with pytest.raises(ValueError, match="saturated"):  # without a level: a pile-up at a 16-bit ADC's full scale
        compute_calibration(dark, flat)
    with pytest.raises(ValueError, match="saturated"):  # a 12-bit camera, level from the config
        compute_calibration(dark, np.full(dark.shape, 4000.0, np.float32), saturation_level=4000.0)


def test_flats_clipped_at_a_12_bit_full_scale_refused_even_with_the_uint16_level():
    rng = np.random.default_rng(4)
    dark, _ = _maps(rng)
    flat = np.full(dark.shape, 4095.0, np.float32)  # a 12-bit camera stored as uint16: clips far below 65535
    with pytest.raises(ValueError) as e:
        compute_calibration(dark, flat, saturation_level=65535)
    _one_line(e, "saturated", "100 %", "4095")
    flat = np.full(dark.shape, 4000.0, np.float32)  # uniform but not at a full scale: nothing to say
    compute_calibration(dark, flat, saturation_level=65535)


def test_mostly_saturated_flats_refused():
    rng = np.random.default_rng(1)
    dark, flat = _maps(rng)
    flat.ravel()[: int(0.6 * flat.size)] = 65535.0
    with pytest.raises(ValueError) as e:
        compute_calibration(dark, flat, saturation_level=65535)
    msg = _one_line(e, "saturated", "lower dose")
    assert "60 %" in msg


def test_a_few_saturated_flat_pixels_are_flagged_not_refused():
    rng = np.random.default_rng(2)
    dark, flat = _maps(rng)
    hits = [(3, 4), (20, 30), (47, 39)]
    for y, x in hits:
        flat[y, x] = 65535.0
    for detect in (True, False):
        cal = compute_calibration(dark, flat, saturation_level=65535, detect=detect)
        for y, x in hits:
            assert cal.bad_pixels[y, x] != 0
        assert np.count_nonzero(cal.bad_pixels) <= 3 + 2  # the rest stays good
        assert np.isfinite(cal.flat_level) and 15000 < cal.flat_level < 25000
    # and a normal float flat without any level is accepted as before
    dark, flat = _maps(rng)
    assert np.count_nonzero(compute_calibration(dark, flat).bad_pixels) == 0


def test_saturation_is_judged_on_the_raw_flat_when_given():
    from pipeline.ops.flatfield import saturation_level_for

    rng = np.random.default_rng(3)
    dark, _ = _maps(rng)
    raw = np.full(dark.shape, 65535.0, np.float32)
    linearised = (raw - dark) / np.float32(1.07) + dark  # e.g. divided by the afterglow DC gain: off the level
    compute_calibration(dark, linearised, saturation_level=65535)  # the transformed map alone shows nothing
    with pytest.raises(ValueError, match="saturated"):
        compute_calibration(dark, linearised, saturation_level=65535, raw_flat_map=raw)
    assert saturation_level_for(np.uint16) == 65535.0 and saturation_level_for(np.uint8) == 255.0
    assert saturation_level_for(np.float32) is None and saturation_level_for(np.uint16, 4000) == 4000.0


# --------------------------------------------------------------------------- where numbers enter the API and readers


@pytest.fixture
def sim32(tmp_path):
    return pipeline.simulate(tmp_path / "s.zarr", frames=8, size=(32, 32), truth_frames=False)


def test_run_checks_sizes_against_the_frames(sim32, tmp_path):
    with pytest.raises(ConfigError) as e:
        pipeline.run(sim32, tmp_path / "o.zarr", overrides=["denoise.enabled=true", "denoise.method=nlm",
                                                            "denoise.nlm_search=40"])
    _one_line(e, "denoise.nlm_search", "32 x 32")
    assert not (tmp_path / "o.zarr").exists()


def test_open_input_checks_attributes(sim32, tmp_path):
    from pipeline.io import zarr_store

    _set(sim32, {"pixel_pitch_mm": -0.01})
    with pytest.raises(DataError) as e:
        zarr_store.open_input(sim32)
    _one_line(e, "pixel_pitch_mm", "-0.01")


def test_ingest_refuses_a_nan_pixel_pitch(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((2, 8, 8), np.uint16))
    with pytest.raises(DataError) as e:
        pipeline.api.ingest(tmp_path / "f.npy", tmp_path / "o.zarr", pixel_pitch_mm=float("nan"))
    _one_line(e, "--pixel-pitch")
    assert not (tmp_path / "o.zarr").exists()


def test_afterglow_fit_refuses_a_nan_frame_rate(sim32, tmp_path):
    with pytest.raises(DataError) as e:
        pipeline.api.fit_afterglow(sim32, tmp_path / "m.json", frame_rate_hz=float("nan"))
    _one_line(e, "--frame-rate")


def test_mtf_refuses_a_negative_pixel_pitch(sim32):
    with pytest.raises(DataError) as e:
        pipeline.api.measure_mtf(sim32, pixel_pitch_mm=-1.0)
    _one_line(e, "--pixel-pitch")


def test_calibrate_refuses_flats_at_the_uint16_maximum(sim32):
    g = zarr.open_group(str(sim32), mode="r+")
    g["flats"][...] = 65535
    with pytest.raises(CalibrationError) as e:
        pipeline.calibrate(sim32)
    _one_line(e, "saturated", "100 %", "lower dose", str(sim32))


def test_calibrate_passes_the_configured_saturation_level(sim32):
    g = zarr.open_group(str(sim32), mode="r+")
    g["flats"][...] = 30000  # a camera that clips at 30000 (flatfield.saturation_level), not at a dtype maximum
    with pytest.raises(CalibrationError) as e:
        pipeline.calibrate(sim32, {"flatfield": {"saturation_level": 30000}})
    _one_line(e, "saturated", "30000")


def test_load_calibration_checks_its_attributes(sim32, tmp_path):
    pipeline.save_calibration(pipeline.calibrate(sim32), tmp_path / "cal.zarr")
    _set(tmp_path / "cal.zarr", {"flat_level": float("nan")})
    with pytest.raises(CalibrationError) as e:
        pipeline.api.load_calibration(tmp_path / "cal.zarr", (32, 32))
    _one_line(e, "flat_level")


@pytest.mark.parametrize("args", [["ingest", "IN", "OUT", "--pixel-pitch", "nan"],
                                  ["simulate", "OUT", "--frame-rate", "inf"],
                                  ["mtf", "IN", "--f-max", "nan"]])
def test_cli_refuses_nan_and_inf_numbers(sim32, tmp_path, args):
    from conftest import run_cli

    args = [str(sim32) if a == "IN" else str(tmp_path / "o.zarr") if a == "OUT" else a for a in args]
    p = run_cli(*args)
    assert p.returncode == 2 and "is not a finite number" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o.zarr").exists()
