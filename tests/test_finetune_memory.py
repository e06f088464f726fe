"""Fine-tuning memory is bounded: clips are streamed from the decode workers per batch.

One fine-tune epoch runs in a fresh process on 48 and on 96 synthetic videos (tiny frames, 10 s
of audio per clip, frozen encoders); its peak RSS (``ru_maxrss``) must differ by less than 10%.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EPOCH = r"""
import json, resource, sys
from pathlib import Path
import psutil, torch
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.data import stream_clips
from pipeline.finetune.run import build_model
from pipeline.finetune.train import Dist, fit
root, n = Path(sys.argv[1]), int(sys.argv[2])
vids = sorted((root / "AVE").glob("*.mp4"))
cfg = FinetuneConfig(visual="resnet50", audio="vggish", visual_weights="random", audio_weights="random",
                     visual_trainable=[], audio_trainable=[], image_size=64, frames_per_segment=1,
                     segments_per_clip=10, batch_size=16, epochs=1, optimizer="adamw", workers=2,
                     resume=False, device="cpu", clip_cache_mb=0)  # every clip streamed
core, rate = build_model(cfg, log=lambda s: None)
train = stream_clips([(p.stem, str(p)) for p in vids[8:8 + n]], cfg, rate, log=print)
held = stream_clips([(p.stem, str(p)) for p in vids[:8]], cfg, rate, log=print)
before = psutil.Process().memory_info().rss
fit(core, train, held, cfg, Dist(0, 1, torch.device("cpu")), Path(sys.argv[3]), log=lambda s: None)
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "before": before}))
"""


@pytest.fixture(scope="module")
def videos_104(tmp_path_factory):
    from pipeline.config import SynthConfig
    from pipeline.data.synth import generate

    root = tmp_path_factory.mktemp("mem") / "root"
    generate(SynthConfig(root=str(root), seed=3, num_classes=3, train=104, val=0, test=0, width=32,
                         height=32, fps=25.0, workers=2), root)
    return root


def _epoch(root: Path, n: int, tmp: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", EPOCH, str(root), str(n), str(tmp / f"ck{n}")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_finetune_epoch_peak_rss_does_not_grow_with_videos(videos_104, tmp_path):
    small, large = _epoch(videos_104, 48, tmp_path), _epoch(videos_104, 96, tmp_path)
    assert large["peak"] < 1.10 * small["peak"], (small, large)
