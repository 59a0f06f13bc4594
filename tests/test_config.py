from pathlib import Path

import pytest
import yaml

from pipeline.config import RunConfig, load_config, parse_override
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_is_the_schema_default():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert cfg == RunConfig()
    # and the file lists every key (it documents the schema)
    data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert set(data) == set(RunConfig.model_fields)
    for section, model in RunConfig.model_fields.items():
        assert set(data[section]) == set(model.annotation.model_fields), section


def test_unknown_key_named():
    with pytest.raises(ConfigError, match=r"'flatfield\.outptu' is unknown.*output"):
        load_config({"flatfield": {"outptu": "counts"}})
    with pytest.raises(ConfigError, match=r"'flatfeld' is unknown"):
        load_config(overrides=["flatfeld.output=counts"])


def test_wrong_type_named():
    with pytest.raises(ConfigError, match=r"'execution\.chunk_frames'.*'abc'"):
        load_config(overrides=["execution.chunk_frames=abc"])
    with pytest.raises(ConfigError, match=r"'flatfield\.flat_exposure_ratio'"):
        load_config({"flatfield": {"flat_exposure_ratio": -1}})
    with pytest.raises(ConfigError, match=r"'flatfield\.bad_pixels\.window'.*odd"):
        load_config(overrides=["flatfield.bad_pixels.window=4"])


def test_layering_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("flatfield:\n  output: transmission\nexecution:\n  chunk_frames: 4\n")
    cfg = load_config(f, overrides=["execution.chunk_frames=8"])
    assert cfg.flatfield.output == "transmission" and cfg.execution.chunk_frames == 8
    assert parse_override("a.b=1.5") == {"a": {"b": 1.5}}


def test_bad_yaml_and_missing_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("flatfield: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_config_is_frozen():
    cfg = RunConfig()
    with pytest.raises(Exception):
        cfg.execution.chunk_frames = 3
