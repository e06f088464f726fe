"""Metrics on hand-made predictions, evaluation of a checkpoint, and the results table."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.settings import metrics as M
from pipeline.evaluation import report

# 2 videos x 5 segments, classes 0,1 and background 2.
TRUE = np.array([[2, 0, 0, 0, 2],
                 [1, 1, 1, 2, 2]])
PRED = np.array([[2, 0, 1, 0, 0],
                 [1, 1, 2, 2, 2]])


def test_accuracy_per_class_and_confusion_by_hand():
    assert M.segment_accuracy(PRED, TRUE) == pytest.approx(7 / 10)
    cm = M.confusion_matrix(PRED, TRUE, 3)
    assert cm.tolist() == [[2, 1, 0],   # true 0: two right, one called 1
                           [0, 2, 1],   # true 1: two right, one called background
                           [1, 0, 3]]   # true bg: three right, one called 0
    assert M.per_class_accuracy(PRED, TRUE, 3) == pytest.approx([2 / 3, 2 / 3, 3 / 4])
    assert M.per_class_accuracy(np.array([0]), np.array([0]), 3)[1] is None


def test_event_vs_background_precision_recall_f1_by_hand():
    # predicted events: 6 segments; true events: 6; both event: 5 (class ignored).
    ev = M.event_detection(PRED, TRUE, background=2)
    assert ev["precision"] == pytest.approx(5 / 6)
    assert ev["recall"] == pytest.approx(5 / 6)
    assert ev["f1"] == pytest.approx(5 / 6)
    none = M.event_detection(np.full((1, 3), 2), np.array([[0, 2, 2]]), background=2)
    assert none == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_summarize_names_classes():
    s = M.summarize(PRED, TRUE, ["dog", "cat"])
    assert s["labels"] == ["dog", "cat", "background"] and s["segments"] == 10
    assert s["per_class"]["background"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        M.segment_accuracy(PRED[:1], TRUE)


def test_evaluate_checkpoint_writes_metrics_and_plots(tmp_path):
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.training.data import load_dataset
    from pipeline.training.loop import run_spec, train
    from test_training import write_set  # also registers the "toy" head

    prepared, feats = write_set(tmp_path / "set", n_per_split=(32, 8, 8))
    data = load_dataset(prepared, feats, "vis", "aud", verbose=False)
    train(run_spec("toy", "fully", device="cpu"), data, tmp_path / "m")
    res = evaluate(tmp_path / "m" / "best.pt", prepared, feats, "vis", "aud", tmp_path / "ev",
                   device="cpu", timelines=2)
    assert res["accuracy"] > 0.9 and res["segments"] == 80 and res["head"] == "toy"
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(res["accuracy"])
    assert set(metrics["event"]) == {"precision", "recall", "f1"} and "per_class" in metrics
    assert metrics["num_parameters"] == res["num_parameters"]
    cm = json.loads((tmp_path / "ev" / "plots" / "sklearn" / "confusion_matrix.json").read_text())
    assert len(cm) == 80 and set(cm[0]) == {"actual", "predicted"}
    images = sorted(p.name for p in (tmp_path / "ev" / "plots" / "images").iterdir())
    assert "confusion.png" in images and sum(n.startswith("timeline_") for n in images) == 2
    with pytest.raises(ValueError, match="trained on train.visual"):
        bad = tmp_path / "m" / "bad.pt"
        from pipeline.training import checkpoint as ck
        c = ck.load(tmp_path / "m" / "best.pt")
        c["params"] = {"train": {"visual": "resnet50", "audio": "aud"}}
        ck.save(c, bad)
        evaluate(bad, prepared, feats, "vis", "aud", None, device="cpu")


def test_report_rows_and_table_schema(tmp_path):
    res = {"accuracy": 0.7512, "num_parameters": 1234, "train_seconds": 12.345}
    ts = {**res, "accuracy": 0.7834}  # the test-selected checkpoint's result
    cml = {**res, "accuracy": 0.45, "cross_modal": {"a2v": 0.4, "v2a": 0.5}, "videos": 40,
           "cml_excluded": {"full_length": 7, "no_event": 1},
           "cml_excluded_by_split": {"train": {"full_length": 30, "no_event": 0},
                                     "val": {"full_length": 5, "no_event": 1},
                                     "test": {"full_length": 7, "no_event": 1}}}
    cml_ts = {**cml, "accuracy": 0.5, "cross_modal": {"a2v": 0.45, "v2a": 0.55}}
    rows = [report.cell_row("psp", "fully", "vgg19", "vggish", res, result_test_selected=ts,
                            selection="psp script"),
            report.cell_row("psp", "weak", "vgg19", "vggish", res),
            report.cell_row("cace", "weak", "vgg19", "vggish", None, report.NOT_DEFINED),
            report.cell_row("majority", "fully", "vgg19", "vggish", res),
            report.cell_row("m2n", "cml", "vgg19", "vggish", cml, result_test_selected=cml_ts),
            report.cell_row("psp", "cml", "vgg19", "vggish", None, report.NOT_DEFINED)]
    jp, mp, hp = report.write_table(rows, tmp_path)
    loaded = json.loads(jp.read_text())
    assert isinstance(loaded, list) and len(loaded) == 6 and hp.is_file()
    for r in loaded:
        assert set(report.ROW_KEYS) <= set(r)
        assert isinstance(r["head"], str) and r["setting"] in ("fully", "weak", "cml")
        assert r["accuracy"] is None or 0 <= r["accuracy"] <= 100
        assert r["params"] is None or isinstance(r["params"], int)
    assert loaded[0]["accuracy"] == 75.12 and loaded[0]["paper_accuracy"] == 77.8
    assert loaded[0]["accuracy_test_selected"] == 78.34 and loaded[0]["selection"] == "psp script"
    assert loaded[1]["accuracy_test_selected"] is None
    assert loaded[1]["paper_accuracy"] == 73.5 and loaded[3]["paper_accuracy"] is None
    assert loaded[2]["accuracy"] is None and loaded[2]["note"] == report.NOT_DEFINED
    assert loaded[4]["cross_modal"] == {"a2v": 40.0, "v2a": 50.0} and loaded[4]["accuracy"] == 45.0
    assert loaded[4]["paper_accuracy"] == 52.4 and loaded[4]["paper_cross_modal"] == {"a2v": 51.2,
                                                                                      "v2a": 53.6}
    assert loaded[4]["cml_excluded"] == {"full_length": 7, "no_event": 1}
    assert loaded[4]["cross_modal_test_selected"] == {"a2v": 45.0, "v2a": 55.0}
    assert loaded[5]["cross_modal"] is None and loaded[5]["paper_cross_modal"] is None
    md = mp.read_text()
    # per setting: ours (val-selected), ours (test-selected), the paper
    assert "| psp | 75.1 | 78.3 | 77.8 | 75.1 | – | 73.5 |" in md
    assert "not defined by the paper" in md
    # cml rows: their own table in M2N Table 1's layout (A2V, V2A, average), not in the SEL
    # one, on the cml split with the excluded test videos counted.
    assert ("| m2n | 40 | 30 / 5 / 7 | 0 / 1 / 1 | 40.0 | 45.0 | 51.2 | 50.0 | 55.0 | 53.6 "
            "| 45.0 | 50.0 | 52.4 | 1,234 | 12 |") in md
    assert "no cml setting): psp." in md and md.count("| psp |") == 1
    with pytest.raises(ValueError, match="lacks"):
        report.write_table([{"head": "x"}], tmp_path)


def test_report_stage_cells_and_table(tmp_path):
    """stages/report.py: a trained cell, a setting the head lacks, and the gathered table."""
    import importlib.util

    import yaml
    from test_training import write_set  # registers "toy"

    from pipeline.config import load_params
    from pipeline.heads import _registry

    prepared, feats = write_set(tmp_path / "set", n_per_split=(16, 8, 8))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "paths": {"prepared": str(prepared), "features": str(feats),
                  "models": str(tmp_path / "models"), "reports": str(tmp_path / "reports"),
                  "resume": str(tmp_path / "resume")},
        "train": {"visual": "vis", "audio": "aud", "device": "cpu", "lr": 123.0},
        "evaluate": {"timelines": 0},
        "report": {"heads": ["toy", "toy_fully"], "settings": ["fully", "weak", "cml"],
                   "epochs": 1}}))
    if "toy_fully" not in _registry._HEADS:
        from test_training import _ToyHead
        register = _registry.register_head("toy_fully")
        register(type("ToyFully", (_ToyHead,), {"settings": ("fully",),
                                                "TRAIN_DEFAULTS": {"fully": _ToyHead.TRAIN_DEFAULTS["fully"]}}))
    from pathlib import Path
    stage_file = Path(__file__).resolve().parents[1] / "stages" / "report.py"
    spec = importlib.util.spec_from_file_location("report_stage", stage_file)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    params = load_params(tmp_path / "params.yaml")
    for head in ("toy", "toy_fully"):
        for setting in ("fully", "weak", "cml"):
            stage.cell(params, head, setting)  # report.seeds default: [null]
    stage.table(params)
    rows = json.loads((tmp_path / "reports" / "results.json").read_text())
    assert [(r["head"], r["setting"]) for r in rows] == [
        (h, s) for h in ("toy", "toy_fully") for s in ("fully", "weak", "cml")]
    undefined = [rows[i] for i in (2, 4, 5)]  # toy-cml, toy_fully-weak, toy_fully-cml
    assert all(r["accuracy"] is None and r["note"] == report.NOT_DEFINED for r in undefined)
    assert all(rows[i]["accuracy"] is not None and rows[i]["params"] == 44 for i in (0, 1, 3))
    assert not any(any((tmp_path / "models" / "matrix" / f"{c}-seedNone").iterdir())
                   for c in ("toy-cml", "toy_fully-weak", "toy_fully-cml"))  # nothing trained
    assert (tmp_path / "models" / "matrix" / "toy-weak-seedNone" / "best.pt").is_file()
    assert all(rows[i]["seeds"] == [0] for i in (0, 1, 3))  # null: train.seed, as the run used
    assert all(rows[i]["accuracy_test_selected"] is not None for i in (0, 1, 3))
    for protocol in ("val", "test"):
        assert (tmp_path / "reports" / "matrix" / "toy-fully-seedNone" / f"evaluate_{protocol}"
                / "metrics.json").is_file()
    # cells use the paper recipe (train.lr is not applied), with report.epochs
    from pipeline.training import checkpoint as ck
    best = ck.load(tmp_path / "models" / "matrix" / "toy-weak-seedNone" / "best.pt")
    assert best["recipe"]["lr"] == 0.05 and best["recipe"]["epochs"] == 1
    md = (tmp_path / "reports" / "results.md").read_text()
    assert sum(line.startswith("| toy") for line in md.splitlines()) == 2
    assert "no cml setting): toy, toy_fully." in md
    assert "| fully | toy" in md or "| fully | toy_fully" in md  # the head against the next best
    per_video = json.loads((tmp_path / "reports" / "matrix" / "toy-fully-seedNone" / "evaluate_val"
                            / "per_video.json").read_text())
    assert len(per_video["videos"]) == len(per_video["score"]) == 8
    assert np.mean(per_video["score"]) == pytest.approx(rows[0]["accuracy"] / 100, abs=1e-4)
    lo, hi = rows[0]["accuracy_ci95"]
    assert lo <= rows[0]["accuracy"] <= hi


def test_evaluate_cml_checkpoint_scores_a2v_v2a_windows(tmp_path):
    """A cml checkpoint: accuracy = mean(A2V, V2A) window accuracy, no class/event metrics,
    window-vs-event confusion and timelines for the DVC plot outputs."""
    import torch
    from test_training import M2N_TINY, write_set

    from pipeline.evaluation.evaluate import evaluate
    from pipeline.settings.cml import cml_evaluate
    from pipeline.training import checkpoint as ck
    from pipeline.training.data import load_dataset
    from pipeline.training.loop import run_spec, train

    prepared, feats = write_set(tmp_path / "set", n_per_split=(16, 8, 8),
                                full_length=range(0, 32, 3))  # 2 of them in the cml test split
    data = load_dataset(prepared, feats, "vis", "aud", verbose=False, setting="cml")
    train(run_spec("m2n", "cml", device="cpu", hparam_overrides=M2N_TINY,
                  recipe_overrides={"epochs": 2, "lr": 3e-3}), data, tmp_path / "m")
    res = evaluate(tmp_path / "m" / "best.pt", prepared, feats, "vis", "aud", tmp_path / "ev",
                   device="cpu", batch_size=3, timelines=3)
    test = data.splits["test"]
    n_full = len(test.setting_excluded["full_length"])
    assert n_full > 0 and res["cml_excluded"] == {"full_length": n_full, "no_event": 0}
    assert res["videos"] == len(test) == 8 - n_full
    head = ck.load_head(tmp_path / "m" / "best.pt")[0]
    acc, windows = cml_evaluate(head, test.visual, test.audio, test.labels, torch.device("cpu"))
    expect = {"a2v": pytest.approx(acc["a2v"]), "v2a": pytest.approx(acc["v2a"])}
    assert res["cross_modal"] == expect
    assert res["accuracy"] == pytest.approx((acc["a2v"] + acc["v2a"]) / 2)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(res["accuracy"])
    assert metrics["cross_modal"] == expect
    assert "event" not in metrics and "per_class" not in metrics
    assert metrics["cml_excluded"] == {"full_length": n_full, "no_event": 0}
    by_split = res["cml_excluded_by_split"]  # train and val from the training run
    assert by_split["train"]["full_length"] == len(data.splits["train"].setting_excluded["full_length"])
    assert set(by_split) == {"train", "val", "test"} and by_split["test"]["full_length"] == n_full
    # Confusion of window segments (A2V rows, then V2A) against the event segments.
    events = int((test.targets != 3).sum())
    cm = np.asarray(res["confusion"])
    n = len(test)
    assert res["labels"] == ["event", "background"] and cm.sum() == 2 * n * 10
    assert cm[0].sum() == 2 * events
    assert cm[:, 0].sum() == int(windows["a2v"].sum() + windows["v2a"].sum())
    plot = json.loads((tmp_path / "ev" / "plots" / "sklearn" / "confusion_matrix.json").read_text())
    assert len(plot) == 2 * n * 10
    images = sorted(p.name for p in (tmp_path / "ev" / "plots" / "images").iterdir())
    assert "confusion.png" in images and sum(n.startswith("timeline_") for n in images) == 3


def _reference_metrics(pred, true, num_labels, background):
    """The hand formulas the sklearn-based metrics replaced (results must not change)."""
    pred, true = pred.reshape(-1), true.reshape(-1)
    cm = np.bincount(true * num_labels + pred, minlength=num_labels ** 2).reshape(num_labels, -1)
    pe, te = pred != background, true != background
    tp = int((pe & te).sum())
    p = tp / int(pe.sum()) if pe.any() else 0.0
    r = tp / int(te.sum()) if te.any() else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return cm, (pred == true).mean(), {"precision": p, "recall": r, "f1": f1}


@pytest.mark.parametrize("seed", range(6))
def test_sklearn_metrics_equal_the_hand_formulas(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    shape = (int(rng.integers(1, 8)), 10)
    true = rng.integers(0, k, shape)
    # seeds 0/1: everything background in pred / true (the zero-division cases)
    pred = np.full(shape, k - 1) if seed == 0 else rng.integers(0, k, shape)
    if seed == 1:
        true = np.full(shape, k - 1)
    cm, acc, ev = _reference_metrics(pred, true, k, k - 1)
    out = M.confusion_matrix(pred, true, k)
    assert out.dtype == np.int64 and out.tolist() == cm.tolist()
    assert M.segment_accuracy(pred, true) == pytest.approx(acc, abs=1e-15)
    got = M.event_detection(pred, true, background=k - 1)
    assert got == pytest.approx(ev, abs=1e-12)
    with pytest.raises(ValueError, match="class index outside"):
        M.confusion_matrix(pred, true, k - 1 if (true == k - 1).any() or (pred == k - 1).any() else 1)


def test_evaluate_page_labels_columns_marks_wrong_segments_and_states_the_rule(tmp_path):
    from pipeline.evaluation.evaluate import prediction_rule
    from pipeline.evaluation.html import write_evaluation_page

    labels = ["Bark", "Church bell", "background"]
    true = np.array([[2, 0, 0, 2], [1, 1, 1, 1]])
    pred = np.array([[0, 0, 0, 0], [1, 1, 1, 1]])  # video 1: every segment its class
    rule = prediction_rule("cmbs", "weak", {"weak_predict": "video"})
    assert "video's class" in rule and prediction_rule("psp", "weak", {}) is None
    assert "0.5" in prediction_rule("cmbs", "fully", {})
    res = {"labels": labels, "accuracy": 0.75, "event": {"f1": 0.8}, "per_class": {"Bark": 1.0},
           "confusion": [[2, 0, 0], [0, 4, 0], [2, 0, 0]], "head": "cmbs", "setting": "weak",
           "split": "test", "best_epoch": 3, "prediction_rule": rule}
    page = write_evaluation_page(tmp_path / "index.html", res, pred, true, ["a", "b"]).read_text()
    assert page.count('class="seg wrong"') == 2  # the two background segments of video a
    assert "wrong, truth: background" in page
    assert "Prediction rule" in page and "weak_predict: video" in page
    for header in ("metric", "value", "class", "segment accuracy", "video", "correct",
                   "truth / prediction", "rows: truth, columns: prediction"):
        assert header in page, header
