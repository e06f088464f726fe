"""The one config loader: params.yaml is validated on load, errors name the key."""
import re
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
    with pytest.raises(config.ConfigError, match=r"runtime\.data\.workers: expected an integer"):
        _load(tmp_path, {"runtime": {"data": {"workers": True}}})


def test_runtime_knobs_load_into_their_section_and_only_from_runtime(tmp_path):
    params = _load(tmp_path, {"runtime": {"extract": {"workers": 5, "download": False},
                                          "train": {"resume": False}}})
    assert params["extract"].workers == 5 and params["extract"].download is False
    assert params["train"].resume is False and "runtime" not in params
    assert "workers" not in config.recorded("extract", params["extract"])
    with pytest.raises(config.ConfigError, match=r"params\.yaml: extract\.workers: a runtime knob .*"
                                                 r"set it as runtime\.extract\.workers"):
        _load(tmp_path, {"extract": {"workers": 1}})
    with pytest.raises(config.ConfigError, match=r"unknown key runtime\.extract\.batch_videos; "
                                                 r"allowed: workers, queue_batches, download"):
        _load(tmp_path, {"runtime": {"extract": {"batch_videos": 1}}})
    with pytest.raises(config.ConfigError, match=r"runtime\.extract\.workers: must be >= 0"):
        _load(tmp_path, {"runtime": {"extract": {"workers": -1}}})


def test_no_stage_lists_a_runtime_knob():
    """The rule of params.yaml: runtime knobs are written under runtime:, which no stage lists."""
    for dvcfile in (ROOT / "dvc.yaml", ROOT / "matrix" / "dvc.yaml"):
        text = dvcfile.read_text()
        assert not [x for x in re.findall(r"^\s+- (\S+)", text, re.M) if x.startswith("runtime")]
        for section, keys in config.RUNTIME_KEYS.items():
            for key in keys:
                assert f"- {section}.{key}\n" not in text, (dvcfile, section, key)


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
