"""Seeds and intervals of the results table: the bootstrap on known answers, pooling seeds into a
row, the head-vs-next-best comparison, and the self-contained results page (its content, and
a headless Chromium render where Chromium is installed)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.evaluation import report
from pipeline import settings
from pipeline.evaluation.intervals import bootstrap_ci, paired_bootstrap


def test_bootstrap_known_answers():
    assert bootstrap_ci(np.ones((3, 40))) == (1.0, 1.0)  # right on every video: [1, 1]
    assert bootstrap_ci(np.zeros((1, 5))) == (0.0, 0.0)
    scores = np.random.default_rng(1).random((2, 50))
    diff, (lo, hi) = paired_bootstrap(scores, scores)  # identical predictions: zero width
    assert diff == lo == hi == 0.0
    lo, hi = bootstrap_ci(scores)
    assert lo < scores.mean() < hi and (lo, hi) == bootstrap_ci(scores)  # seeded: deterministic
    # a head better by exactly 0.1 on every video: the paired difference is 0.1 whatever is drawn
    diff, (lo, hi) = paired_bootstrap(scores * 0.5 + 0.1, scores * 0.5)
    assert diff == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    # pooling seeds = bootstrapping the per-video mean over seeds
    assert bootstrap_ci(scores) == bootstrap_ci(scores.mean(0, keepdims=True))
    with pytest.raises(ValueError, match="same videos"):
        paired_bootstrap(np.ones((1, 3)), np.ones((1, 4)))


def test_video_scores_average_to_the_accuracy():
    true = np.array([[2, 0, 0, 0, 2], [1, 1, 1, 2, 2]])
    pred = np.array([[2, 0, 1, 0, 0], [1, 1, 2, 2, 2]])
    assert settings.get("fully").video_scores(pred, true).tolist() == [0.6, 0.8]
    # cml: rows A2V (2 videos) then V2A; a video scores the mean of its two exact matches
    assert settings.get("cml").video_scores(np.array([[0, 1], [0, 0], [0, 1], [1, 1]]),
                                        np.array([[0, 1], [0, 1], [0, 1], [0, 1]])).tolist() == [1.0, 0.0]


def _run(head, setting, seed, acc, acc_test, scores, scores_test):
    res = {"accuracy": acc, "num_parameters": 10, "train_seconds": 2.0}
    row = report.cell_row(head, setting, "vgg19", "vggish", res,
                          result_test_selected={**res, "accuracy": acc_test})
    videos = [f"v{i}" for i in range(len(scores))]
    return {"row": {**row, "seed": seed},
            "scores": {"val": {"videos": videos, "score": list(scores)},
                       "test": {"videos": videos, "score": list(scores_test)}}}


def _table_runs():
    rng = np.random.default_rng(0)
    runs = {("psp", "fully"): [], ("majority", "fully"): []}
    for seed in (0, 1, 2):
        s = (rng.random(24) < 0.8).astype(float)
        runs[("psp", "fully")].append(_run("psp", "fully", seed, s.mean(), s.mean(), s, s))
        m = np.full(24, 0.5)
        runs[("majority", "fully")].append(_run("majority", "fully", seed, 0.5, 0.5, m, m))
    undefined = report.cell_row("psp", "cml", "vgg19", "vggish", None, report.NOT_DEFINED)
    runs[("psp", "cml")] = [{"row": {**undefined, "seed": s}, "scores": {}} for s in (0, 1, 2)]
    return runs


def test_seed_runs_pool_into_one_row_with_sd_and_intervals():
    runs = _table_runs()
    rows = [report.seed_runs_row(r) for r in runs.values()]
    report.compare_heads(rows, runs)
    psp, majority, cml = rows
    assert psp["seeds"] == [0, 1, 2] and "seed" not in psp
    by_seed = [100 * r["row"]["accuracy"] / 100 for r in runs[("psp", "fully")]]
    assert psp["accuracy_by_seed"] == pytest.approx(by_seed)
    assert psp["accuracy"] == pytest.approx(np.mean(by_seed), abs=0.01)
    assert psp["accuracy_sd"] == pytest.approx(np.std(by_seed, ddof=1), abs=0.01) and psp["accuracy_sd"] > 0
    for key in ("accuracy", "accuracy_test_selected"):
        lo, hi = psp[f"{key}_ci95"]
        assert lo < psp[key] < hi
    assert majority["accuracy"] == 50.0 and majority["accuracy_sd"] == 0.0
    assert majority["accuracy_ci95"] == [50.0, 50.0]
    assert cml["accuracy"] is None and cml["accuracy_ci95"] is None and cml["seeds"] == [0, 1, 2]
    vs = psp["vs_next"]["val"]
    assert vs["head"] == "majority" and vs["videos"] == 24
    assert vs["difference"] == pytest.approx(psp["accuracy"] - 50.0, abs=0.02)
    assert vs["ci95"][0] <= vs["difference"] <= vs["ci95"][1]
    assert majority["vs_next"] == {} and cml["vs_next"] == {}

    md = report.markdown(rows)
    sd, (lo, hi) = psp["accuracy_sd"], psp["accuracy_ci95"]
    assert f"| psp | {psp['accuracy']:.1f} ± {sd:.1f} [{lo:.1f}, {hi:.1f}] |" in md
    assert "| 0, 1, 2 / – |" in md
    assert "## Each head against the next best in its setting" in md
    assert f"| fully | psp | majority: {vs['difference']:+.1f}" in md


def test_a_difference_is_real_when_its_interval_excludes_zero():
    assert report.fmt_difference({"head": "cmbs", "difference": 1.5, "ci95": [0.2, 2.9]}) == \
        "cmbs: +1.5 [+0.2, +2.9] (real)"
    assert report.fmt_difference({"head": "cmbs", "difference": 1.5, "ci95": [-0.4, 3.1]}) == \
        "cmbs: +1.5 [-0.4, +3.1]"
    assert report.fmt_difference(None) == "–"


def test_runs_on_different_videos_are_refused():
    runs = _table_runs()[("psp", "fully")]
    runs[1]["scores"]["val"]["videos"] = list(reversed(runs[1]["scores"]["val"]["videos"]))
    with pytest.raises(ValueError, match="psp/fully: the runs were evaluated on different videos"):
        report.seed_runs_row(runs)
    runs = _table_runs()[("psp", "fully")]
    for r in runs:  # annotation rows, when given, identify the videos (an id can have two lines)
        r["scores"]["val"]["rows"] = list(range(24))
    runs[2]["scores"]["val"]["rows"] = list(range(1, 25))
    with pytest.raises(ValueError, match="psp/fully: the runs were evaluated on different videos"):
        report.seed_runs_row(runs)


def test_report_seeds_are_validated(tmp_path):
    from pipeline.config import load_params
    for seeds, message in (([], "at least one seed"), ([0, 0], "lists a seed twice"),
                           ([0, -1], r"seeds\[1\]: must be an integer >= 0 or null"),
                           ([1.5], r"seeds\[0\]")):
        (tmp_path / "params.yaml").write_text(json.dumps({"report": {"seeds": seeds}}))
        with pytest.raises(ConfigError, match=message):
            load_params(tmp_path / "params.yaml")


class _Structure(HTMLParser):
    """Tags balanced (void elements aside) and every external reference collected."""
    VOID = {"meta", "br", "img", "input", "link", "hr", "path", "line", "rect"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.external, self.tags = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href") and v and not v.startswith("#"):
                self.external.append(v)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


@pytest.fixture
def results_page(tmp_path):
    runs = _table_runs()
    rows = [report.seed_runs_row(r) for r in runs.values()]
    report.compare_heads(rows, runs)
    rows[0]["head"] = "psp <b>"  # text from data is escaped
    return report.write_table(rows, tmp_path), rows


def test_results_page_is_self_contained_with_the_numbers(results_page):
    (jp, mp, hp), rows = results_page
    text = hp.read_text()
    parser = _Structure()
    parser.feed(text)
    parser.close()
    assert not parser.errors and parser.stack == [], (parser.errors, parser.stack)
    assert parser.external == [] and "<script" not in text and "url(" not in text
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and "<style>" in text
    assert "psp &lt;b&gt;" in text and "psp <b>" not in text
    psp = rows[0]
    assert report.fmt_accuracy(psp, "accuracy") in text  # mean ± sd [lo, hi]
    assert "77.8" in text  # the paper's number beside ours
    assert text.count("<rect") == 2 * 2 + 1  # ours val and test a head; the paper for psp
    assert len(re.findall(r'<path d="M', text)) == 2 * 2  # error bars: ours val and test
    assert "majority: +" in text


def test_results_page_renders_in_headless_chromium(results_page, tmp_path):
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium) to render results.html")
    (_, _, hp), _ = results_page
    png = tmp_path / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                           f"--screenshot={png}", "--window-size=900,900",
                           hp.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert png.is_file() and png.stat().st_size > 5000, proc.stderr[-2000:]
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile2'}",
                          "--dump-dom", hp.resolve().as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert "<svg" in dom.stdout and "ours, val" in dom.stdout, dom.stderr[-2000:]
