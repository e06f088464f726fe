"""The published-features route through DVC on a tiny copy of the project (see
test_dvc_pipeline.py): files in a data root other than raw/ave and no background-only
`*_noisy.h5` files; `dvc exp run report` builds the table, `fully` as usual and `weak`
saying that it trains without background-only videos."""
from __future__ import annotations

import json
import re
import sys
import time

import h5py
import pytest

from test_dvc_pipeline import tiny_copy
from test_published import _annotations, _published

from pipeline.data.ave import export_labels

pytestmark = pytest.mark.slow


def test_published_route_from_another_root_without_background_only_files(tmp_path):
    root = tmp_path / "repo"
    data = root / "raw" / "published_set"  # not raw/ave
    _annotations(data)
    export_labels(data, tmp_path / "labels")
    with h5py.File(tmp_path / "labels" / "labels.h5") as f:
        labels = f["avadataset"][()]
    _published(data, data, labels)
    for name in ("visual_feature_noisy.h5", "audio_feature_noisy.h5", "labels_noisy.h5"):
        (data / name).unlink()
    run = tiny_copy(root, exclude="raw/published_set/\n")  # the user's files

    def sh(*cmd: str) -> str:
        proc = run(*cmd, timeout=1800)
        return proc.stdout + proc.stderr

    log = sh(sys.executable, "-m", "dvc", "exp", "run", "report",
             "-S", "data.root=raw/published_set", "-S", "data.source=features",
             "-S", "+published.files.published_vgg19={file: visual_feature.h5}",
             "-S", "+published.files.published_vggish={file: audio_feature.h5}",
             "-S", "train.visual=published_vgg19", "-S", "train.audio=published_vggish",
             "-S", "train.feature_norm=none", "-S", "report.heads=[avel]",
             "-S", "report.settings=[fully,weak]", "-S", "report.epochs=1")
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    assert {"import@published_vgg19", "import_background_only@published_vgg19",
            "cell@avel-fully-None", "cell@avel-weak-None"} <= ran, log
    assert not any(s.startswith(("synth", "extract")) for s in ran), ran
    assert "visual_feature_noisy.h5 absent" in log
    print(log)
    assert re.search(r"background-only samples: not used \(.*\); weak training on the train split "
                     r"alone", log), log
    rows = {r["setting"]: r for r in json.loads((root / "reports" / "results.json").read_text())}
    assert rows["fully"]["accuracy"] is not None and rows["weak"]["accuracy"] is not None
    with h5py.File(root / "data" / "features" / "published_vgg19.h5") as f:
        assert f["avadataset"].dtype == "float32"  # the default stored dtype
    # after the run the route reads up to date: no stage that always runs, no hash-info warning
    status = sh(sys.executable, "-m", "dvc", "status", "report")
    assert "Data and pipelines are up to date." in status and "hash info" not in status, status
    again = sh(sys.executable, "-m", "dvc", "repro", "report")
    assert "Running stage" not in again, again


def test_queued_experiment_on_the_published_route_with_files_tracked_by_dvc(tmp_path):
    """docs/published-features.md: the published files given to DVC (`dvc add`) and committed, a
    queued experiment on the route (its own clean copy) has them: it imports, trains and
    evaluates, and runs nothing that needs a video."""
    root = tmp_path / "repo"
    root.mkdir()
    run = tiny_copy(root)
    data = root / "raw" / "ave"  # the route's data root, as README; a small annotation set
    _annotations(data)
    export_labels(data, tmp_path / "labels")
    with h5py.File(tmp_path / "labels" / "labels.h5") as f:
        labels = f["avadataset"][()]
    _published(data, data, labels)

    def sh(*cmd: str) -> str:
        proc = run(*cmd, timeout=1800)
        return proc.stdout + proc.stderr

    files = sorted(p.relative_to(root).as_posix() for p in data.glob("*.h5"))
    sh(sys.executable, "-m", "dvc", "add", *files)
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "Published AVE features, tracked by DVC")
    sh(sys.executable, "-m", "dvc", "exp", "run", "--queue", "-n", "published", "evaluate",
       "-S", "data.root=raw/ave", "-S", "data.source=features",
       "-S", "+published.files.published_vgg19={file: visual_feature.h5}",
       "-S", "+published.files.published_vggish={file: audio_feature.h5}",
       "-S", "train.visual=published_vgg19", "-S", "train.audio=published_vggish",
       "-S", "train.feature_norm=none")
    sh(sys.executable, "-m", "dvc", "queue", "start", "-j", "1")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1800:
        status = sh(sys.executable, "-m", "dvc", "queue", "status")
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(3)
    log = sh(sys.executable, "-m", "dvc", "queue", "logs", "published")
    assert re.search(r"published\s.*Success", status), status + log
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    assert {"import@published_vgg19", "train", "evaluate"} <= ran, log
    assert not any(s.startswith(("synth", "extract", "finetune")) for s in ran), ran
