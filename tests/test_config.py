"""The one config loader: params.yaml is validated on load, errors name the key."""
from pathlib import Path

import pytest
import yaml

from pipeline import config

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_load():
    params = config.load_params(ROOT / "params.yaml")
    assert params["data"].root == "raw/demo"
    assert params["paths"].prepared == "data/prepared"


def _load(tmp_path, raw):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return config.load_params(p)


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(config.ConfigError, match=r"unknown key data\.rooot; allowed keys of data: root"):
        _load(tmp_path, {"data": {"rooot": "x"}})


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(config.ConfigError, match="unknown section 'dataa'"):
        _load(tmp_path, {"dataa": {}})


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(config.ConfigError, match=r"synth\.seed: expected an integer, got 'zero'"):
        _load(tmp_path, {"synth": {"seed": "zero"}})
    with pytest.raises(config.ConfigError, match=r"data\.workers: expected an integer"):
        _load(tmp_path, {"data": {"workers": True}})


def test_literal_lists_allowed_values():
    from dataclasses import dataclass
    from typing import Literal

    @dataclass(frozen=True)
    class S:
        mode: Literal["a", "b"] = "a"

    assert config.from_dict(S, {"mode": "b"}, "s").mode == "b"
    with pytest.raises(config.ConfigError, match=r"s\.mode: 'c' is not allowed; allowed: 'a', 'b'"):
        config.from_dict(S, {"mode": "c"}, "s")


def test_defaults_fill_missing_keys(tmp_path):
    params = _load(tmp_path, {"synth": {"seed": 3}})
    assert params["synth"].seed == 3 and params["synth"].fps == config.SynthConfig().fps
