"""Property-based fuzzing of the parsers a user's files reach: the params loader, the annotation
and split parsers, and the checkpoint converter's ``--set``.

Random bytes and encodings, random YAML structures, random numbers (NaN, inf, negatives, huge):
the only outcomes allowed are a valid result or a ``ConfigError`` / ``InputError`` whose message
names the file or key; any other exception fails the test.

Profiles (Hypothesis settings): ``ci`` (the default: 150 examples a test, derandomized, so every
run tries the same inputs) and ``long`` (``AVE_FUZZ_PROFILE=long``: 5000 random examples a test).
"""
from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import ConfigError, InputError, load_params
from pipeline.data import ave

REPO = Path(__file__).resolve().parents[1]
settings.register_profile("ci", max_examples=150, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("AVE_FUZZ_PROFILE", "ci"))

USER_ERRORS = (ConfigError, InputError)
BASE = yaml.safe_load((REPO / "params.yaml").read_text())

numbers = st.one_of(st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, 2**32, -0.0, 1e308]))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
yaml_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def _paths(tree, prefix=()):
    """Every dotted key path of a nested mapping."""
    for k, v in tree.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


KEY_PATHS = sorted(_paths(BASE))


def _load(text: bytes):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "params.yaml"
        path.write_bytes(text)
        try:
            return load_params(path)
        except USER_ERRORS as e:
            assert str(e).startswith(f"{path}"), e  # names the file (and then the key)
            assert "\n" not in str(e)
            return None


@given(st.binary(max_size=2000))
def test_params_random_bytes(data):
    _load(data)


@given(st.dictionaries(st.sampled_from(sorted(BASE) + ["x", "1"]), yaml_values, max_size=6))
def test_params_random_structures(raw):
    _load(yaml.safe_dump(raw, allow_unicode=True).encode())


@given(st.lists(st.tuples(st.sampled_from(KEY_PATHS), yaml_values), min_size=1, max_size=3),
       st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
def test_params_one_key_changed(changes, encoding):
    """The repository's params.yaml with a few values replaced by random ones."""
    import copy

    raw = copy.deepcopy(BASE)
    for path, value in changes:
        node = raw
        for k in path[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[path[-1]] = value
    text = yaml.safe_dump(raw, allow_unicode=True)
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        data = text.encode("utf-8")
    params = _load(data)
    if params is not None:  # a valid result holds only finite numbers
        train = params["train"]
        assert train.lr is None or math.isfinite(train.lr)
        assert train.seed is None or 0 <= train.seed < 2**32


# --------------------------------------------------------------------------------------------
# Annotation and split files
# --------------------------------------------------------------------------------------------
fields = st.one_of(st.text(max_size=12), st.integers(-20, 30).map(str),
                   st.sampled_from(["Bark", "Church bell", "vid0000001", "good", "0", "10", "5"]))
lines = st.lists(fields, min_size=0, max_size=7).map("&".join)
texts = st.lists(lines, max_size=30).map("\n".join)
files = st.one_of(st.binary(max_size=3000),
                  st.tuples(texts, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le",
                                                    "latin-1", "cp1252"])).map(
                      lambda t: t[0].encode(t[1], errors="replace")))


def _parse(annotations: bytes, splits: list[bytes]):
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = Path(d)
        (root / "Annotations.txt").write_bytes(annotations)
        for name, data in zip(("trainSet.txt", "valSet.txt", "testSet.txt"), splits):
            (root / name).write_bytes(data)
        try:
            ann = ave.load_annotations(root)
        except USER_ERRORS as e:
            assert str(e).startswith(str(root)), e  # names the file
            assert "\n" not in str(e)
            return None
        labels = ann.labels()
        assert labels.shape == (ann.num_lines, 10, ann.num_classes + 1)
        assert np.all(labels.sum(-1) == 1)
        for split in ("train", "val", "test"):
            assert all(0 <= i < ann.num_lines for i in ann.splits[split])
            assert len(set(ann.splits[split])) == len(ann.splits[split])
        return ann


@given(files, st.lists(files, min_size=0, max_size=3))
def test_annotation_and_split_files(annotations, splits):
    _parse(annotations, splits)


@given(texts, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-be"]))
def test_every_unicode_encoding_with_a_bom_reads_the_same(text, encoding):
    """UTF-8 and BOM-marked UTF-16 give the same samples and splits."""
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    plain = text.encode("utf-8")
    a, b = _parse(plain, [plain]), _parse(data, [data])
    assert (a is None) == (b is None)
    if a is not None:
        assert a.samples == b.samples and a.splits == b.splits and a.num_lines == b.num_lines


# --------------------------------------------------------------------------------------------
# The converter's --set
# --------------------------------------------------------------------------------------------
def _heads():
    from pipeline.heads import get_head_class, list_heads

    return {h: sorted(get_head_class(h).DEFAULTS) for h in list_heads()}


HEADS = _heads()
set_values = st.one_of(st.text(max_size=10), numbers.map(str), st.sampled_from(
    [".nan", ".inf", "-.inf", "-1", "0", "1e400", "[1, 2]", "{a: 1}", "true", "code", "", "~"]))


@given(st.sampled_from(sorted(HEADS)), st.sampled_from(["fully", "weak", "cml"]), st.data())
def test_converter_set(head, setting, data):
    from pipeline.import_checkpoint import parse_sets
    from pipeline.training.config import check_head_values

    keys = st.one_of(st.sampled_from(HEADS[head] or ["x"]), st.text(max_size=6))
    items = data.draw(st.lists(st.one_of(st.tuples(keys, set_values).map(lambda kv: f"{kv[0]}={kv[1]}"),
                                         st.text(max_size=10)), max_size=3))
    try:
        overrides = parse_sets(items, head)
        check_head_values(head, setting, overrides)
    except USER_ERRORS as e:
        assert str(e).startswith(("--set", "--setting")), e
        assert "\n" not in str(e)
        return
    for value in overrides.values():  # what passes is finite
        assert not isinstance(value, float) or math.isfinite(value)
