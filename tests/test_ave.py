"""AVE annotation parser, labels, splits and the community label files."""
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.data import ave

REAL = Path(__file__).resolve().parents[1] / "raw" / "ave"


@pytest.fixture(scope="module")
def real():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ann = ave.load_annotations(REAL)
    return ann, [str(w.message) for w in caught]


def test_real_annotations_shape_and_categories(real):
    ann, _ = real
    assert ann.num_lines == 4143 and len(ann.samples) == 4143
    assert ann.num_classes == 28 and ann.background == 28
    # Category index = order of first appearance.
    assert ann.categories[:3] == ["Church bell", "Male speech, man speaking", "Bark"]
    assert ann.categories[-1] == "Mandolin"
    assert {k: len(v) for k, v in ann.splits.items()} == {"train": 3339, "val": 402, "test": 402}
    # The splits partition the annotation lines.
    all_idx = np.concatenate([ann.order(s) for s in ave.SPLITS])
    assert sorted(all_idx.tolist()) == list(range(4143))
    # 45 videos carry more than one sample (one of them three).
    assert len(ann.video_ids()) == 4097


def test_real_defect_line_27_is_all_background(real):
    ann, messages = real
    s = ann.by_index()[26]
    assert (s.video_id, s.start, s.end) == ("VWi2ENBuTbw", 0, 0)
    assert any("Annotations.txt:27" in m and "empty interval" in m for m in messages)
    labels = ann.labels()
    assert labels[26, :, 28].tolist() == [1.0] * 10
    assert 26 in ann.splits["train"]


def test_real_labels_values(real):
    ann, _ = real
    labels = ann.labels()
    assert labels.shape == (4143, 10, 29) and labels.dtype == np.float32
    np.testing.assert_array_equal(labels.sum(-1), 1.0)
    # Line 2: Church bell&MH3m4AwEcRY&good&6&8 -> segments 6, 7 are class 0.
    assert labels[1].argmax(-1).tolist() == [28] * 6 + [0, 0] + [28] * 2
    video = ann.video_labels()  # the published mil_labels.h5: the event class alone
    assert video.shape == (4143, 29) and video.dtype == np.float32
    np.testing.assert_array_equal(video.sum(-1), 1.0)
    assert video[:, 28].sum() == 0  # background = 0 in every row
    assert video[1].tolist() == [1.0] + [0.0] * 28  # partial event: still the class alone
    assert video[26, 0] == 1.0  # line 27, empty interval: its class, as published


def test_split_order_follows_split_file(real):
    ann, _ = real
    lines = (REAL / "testSet.txt").read_text().splitlines()
    by_index = ann.by_index()
    assert [by_index[i].line for i in ann.splits["test"][:5]] == lines[:5]


def test_export_labels_matches_community_layout(tmp_path, real):
    ann, _ = real
    with pytest.warns(ave.AnnotationWarning, match="Annotations.txt:27: empty interval"):
        written = ave.export_labels(REAL, tmp_path)
    with h5py.File(written["labels"]) as f:
        d = f["avadataset"]
        assert d.shape == (4143, 10, 29) and d.dtype == np.float32
        np.testing.assert_array_equal(d[()], ann.labels())
    for split, n in (("train", 3339), ("val", 402), ("test", 402)):
        with h5py.File(tmp_path / f"{split}_order.h5") as f:
            o = f["order"]
            assert o.dtype == np.int64 and o.shape == (n,)
            np.testing.assert_array_equal(o[()], ann.order(split))


def test_cli_export_labels(tmp_path):
    with pytest.warns(ave.AnnotationWarning, match="empty interval"):
        ave.main(["export-labels", str(REAL), str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "labels.h5", "mil_labels.h5", "test_order.h5", "test_order_match.h5", "train_order.h5",
        "train_order_match.h5", "val_order.h5", "val_order_match.h5"]


# sha256 of the published arrays' bytes (reference code's data/*.h5; C order, little endian).
PUBLISHED_SHA256 = {
    "mil_labels": "2445dc602bb49ee94f2104c76a9e315411cd892ee2a1d42ccaf74c5c064eb9e6",
    "train_order_match": "45a393a302608aaec6c7bcab5326e8b96c9b294189add0b2cd15eed9475debfe",
    "val_order_match": "a350f7cc9c4b2d0426942c952881bd54d6f0fefd1d788dc3156663fdf7008d93",
    "test_order_match": "04cfef798c77c3336459e7ca341ff180c3c34656e90da2d7611b7a7b310603fc",
}


def test_export_mil_labels_and_cml_orders_equal_the_published_files(tmp_path):
    import hashlib

    with pytest.warns(ave.AnnotationWarning, match="empty interval"):
        written = ave.export_labels(REAL, tmp_path)
    shapes = {"mil_labels": ("avadataset", np.float32, (4143, 29)),
              "train_order_match": ("order", np.int64, (3339,)),
              "val_order_match": ("order", np.int64, (402,)),
              "test_order_match": ("order", np.int64, (402,))}
    for name, (key, dtype, shape) in shapes.items():
        with h5py.File(tmp_path / f"{name}.h5") as f:
            d = f[key]
            assert d.dtype == dtype and d.shape == shape, name
            digest = hashlib.sha256(np.ascontiguousarray(d[()]).tobytes()).hexdigest()
        assert digest == PUBLISHED_SHA256[name], name
    assert written["mil_labels"] == tmp_path / "mil_labels.h5"


def test_real_cml_split_has_no_full_length_test_event(real):
    """The cml split (raw/ave/cml) differs from the standard one; its test events are partial."""
    ann, _ = real
    by_index = ann.by_index()
    sizes = {s: len(ann.cml_splits[s]) for s in ave.SPLITS}
    assert sizes == {"train": 3339, "val": 402, "test": 402}
    assert ann.cml_splits["test"] != ann.splits["test"]
    lengths = [by_index[i].end - by_index[i].start for i in ann.cml_splits["test"]]
    assert min(lengths) >= 1 and max(lengths) < ave.NUM_SEGMENTS


def _write_root(tmp_path, annotations, train, val=(), test=()):
    (tmp_path / "Annotations.txt").write_text("\n".join(annotations) + "\n")
    for name, lines in (("trainSet.txt", train), ("valSet.txt", val), ("testSet.txt", test)):
        (tmp_path / name).write_text("".join(l + "\n" for l in lines))
    return tmp_path


def test_bad_lines_follow_policy(tmp_path):
    root = _write_root(tmp_path, [
        "Category&VideoID&Quality&StartTime&EndTime",  # header: skipped
        "Bark&aaaaaaaaaaa&good&0&10",
        "Bark&bbbbbbbbbbb&good&3",  # wrong field count
        "Bark&ccccccccccc&good&x&5",  # non-integer
        "Cat&ddddddddddd&good&-2&12",  # out of range -> clamped
        "Cat&eeeeeeeeeee&good&7&3",  # reversed -> swapped
        "Bark&aaaaaaaaaaa&good&0&10",  # verbatim duplicate
    ], train=["Bark&aaaaaaaaaaa&good&0&10", "Bark&bbbbbbbbbbb&good&3", "Dog&zzzzzzzzzzz&good&0&1",
              "Bark&aaaaaaaaaaa&good&0&10", "Bark&aaaaaaaaaaa&good&0&10"],
        test=["Cat&ddddddddddd&good&-2&12"])
    with pytest.warns(ave.AnnotationWarning) as rec:
        ann = ave.load_annotations(root)
    msgs = [str(w.message) for w in rec]
    assert ann.num_lines == 6
    assert [s.index for s in ann.samples] == [0, 3, 4, 5]
    assert ann.categories == ["Bark", "Cat"]
    by = ann.by_index()
    assert (by[3].start, by[3].end) == (0, 10) and (by[4].start, by[4].end) == (3, 7)
    # Each problem names file and line.
    assert any("Annotations.txt:3" in m and "5 '&'-separated" in m for m in msgs)
    assert any("Annotations.txt:4" in m and "not integers" in m for m in msgs)
    assert any("Annotations.txt:5" in m and "clamped" in m for m in msgs)
    assert any("Annotations.txt:6" in m and "swapped" in m for m in msgs)
    assert any("Annotations.txt:7" in m and "repeats line 2" in m for m in msgs)
    assert any("trainSet.txt:3" in m and "unknown category 'Dog'" in m for m in msgs)
    assert any("trainSet.txt:5" in m and "repeats split line" in m for m in msgs)
    # A split line copying an unusable annotation line says so, with both line numbers.
    assert f"{root / 'trainSet.txt'}:2: its annotation line {root / 'Annotations.txt'}:3 is " \
           "unusable (reported there); left out of the split" in msgs
    assert not any("not found" in m for m in msgs)
    # The duplicate annotation line is its own sample; both copies can be matched once.
    assert ann.splits["train"] == [0, 5]
    # Unusable rows stay all-background; row numbers are line indices.
    labels = ann.labels()
    assert labels.shape == (6, 10, 3)
    assert labels[1, :, 2].all() and labels[2, :, 2].all()
    assert ann.splits["val"] == []  # empty file
    assert ann.problems == msgs


def test_missing_annotations_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="Annotations.txt"):
        ave.load_annotations(tmp_path)


def test_repaired_lines_stay_in_their_split(tmp_path):
    """A line warned about and repaired (swapped, clamped) is matched by its text as written:
    its identical copy in a split file keeps it in that split."""
    root = _write_root(tmp_path, [
        "Cat&eeeeeeeeeee&good&7&3",  # swapped -> 3..7
        "Cat&fffffffffff&good&2&12",  # end past 10 -> 2..10
        "Cat&ggggggggggg&good&-1&4",  # start below 0 -> 0..4
        "Bark&hhhhhhhhhhh&good&0&10",
    ], train=["Cat&eeeeeeeeeee&good&7&3", "Bark&hhhhhhhhhhh&good&0&10"],
        val=["Cat&fffffffffff&good&2&12"],
        test=["Cat&ggggggggggg & good&-1&4", "Cat&ggggggggggg&good&-1&4"])
    with pytest.warns(ave.AnnotationWarning) as rec:
        ann = ave.load_annotations(root)
    msgs = [str(w.message) for w in rec]
    assert ann.splits == {"train": [0, 3], "val": [1], "test": [2]}
    assert not any("not found" in m for m in msgs)
    assert any("testSet.txt:2: repeats split line 1" in m for m in msgs)
    by = ann.by_index()
    assert [(by[i].start, by[i].end) for i in range(3)] == [(3, 7), (2, 10), (0, 4)]
    assert ann.labels()[0].argmax(-1).tolist() == [2] * 3 + [0] * 4 + [2] * 3
