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
    for dvcfile in (ROOT / "dvc.yaml",):
        text = dvcfile.read_text()
        assert not [x for x in re.findall(r"^\s+- (\S+)", text, re.M) if x.startswith("runtime")]
        for section, keys in config.RUNTIME_KEYS.items():
            for key in keys:
                assert f"- {section}.{key}\n" not in text, (dvcfile, section, key)


@pytest.mark.parametrize("override, lines", [
    ("train.head=cmbs", ["  head: cmbs                  # avel | psp"]),
    ("train.lr=0.001", ["  lr: 0.001"]),
    ("report.heads=[psp,cmbs]", ["  heads:                      # rows;", "  - psp", "  - cmbs"]),
    ("+heads.psp.tau_fully=0.1", ["  psp:", "    tau_fully: 0.1"]),
])
def test_params_yaml_is_written_as_dvc_writes_it(tmp_path, override, lines):
    """`dvc exp run -S a=b` rewrites params.yaml with ruamel: the file is already in that form
    (empty values for null, block lists, comments where ruamel keeps them), so a -S changes
    only the lines of its own key (one for a scalar), and setting a value to itself changes
    nothing."""
    import difflib

    from dvc.utils.hydra import apply_overrides

    original = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(original)
    apply_overrides(path, ["train.head=psp", "train.lr=null", "report.heads=[]"])
    assert path.read_text() == original
    apply_overrides(path, [override])
    before, after = original.splitlines(), path.read_text().splitlines()
    hunks = [op for op in difflib.SequenceMatcher(None, before, after).get_opcodes()
             if op[0] != "equal"]
    assert len(hunks) == 1, hunks  # one place, and one key's lines there
    _, i1, i2, j1, j2 = hunks[0]
    assert i2 - i1 == 1 and j2 - j1 == len(lines), after[j1:j2]
    assert all(new.startswith(want) for new, want in zip(after[j1:j2], lines)), after[j1:j2]


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
