"""Shared fixtures: a tiny synthetic AVE-format root (session-scoped, built once, ~1-2 s).

* ``tiny_synth_config``: the :class:`SynthConfig` of the tiny set (3 classes, 6/3/3 videos,
  64x48 px, 25 fps, 16 kHz audio). One video carries two annotation lines (two categories),
  as some AVE videos do: 13 annotation lines (= label / feature rows), 12 videos.
* ``ave_root``: path of that set, AVE layout (``Annotations.txt``, ``*Set.txt``,
  ``AVE/<id>.mp4``, ``synth.json``). Treat it as read-only; copy it to modify it.
* ``prepared_dir``: the ``prepare`` stage's output for ``ave_root`` (manifest.csv, labels.h5,
  ``*_order.h5``, categories.json, report.md). Read-only too.
* ``torch_single_thread``: one intra-op torch thread for the test (opt-in, e.g. the head tests).
"""
from __future__ import annotations

import pytest

from pipeline.config import SynthConfig

TINY = SynthConfig(root="", seed=7, num_classes=3, train=6, val=3, test=3, width=64, height=48,
                   fps=25.0, sample_rate=16000, full_fraction=0.5, single_modality=0.6, noise=0.1,
                   two_label=1, workers=1)


@pytest.fixture(scope="session")
def tiny_synth_config() -> SynthConfig:
    return TINY


@pytest.fixture(scope="session")
def ave_root(tmp_path_factory):
    from pipeline.data.synth import generate

    return generate(TINY, tmp_path_factory.mktemp("synth") / "tiny")


@pytest.fixture(scope="session")
def prepared_dir(ave_root, tmp_path_factory):
    from pipeline.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare(ave_root, out, workers=2, timeout_s=30.0)
    return out


@pytest.fixture
def torch_single_thread():
    """One intra-op torch thread for tests on tiny tensors (faster and steadier on a shared
    2-core machine); opt in with ``pytestmark = pytest.mark.usefixtures("torch_single_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
