"""AVEL head (Tian et al. ECCV 2018): attention and training defaults (shared checks in
test_heads_common.py)."""
import pytest
import torch
from test_heads_common import random_inputs

from pipeline.heads import build_head, train_defaults

pytestmark = pytest.mark.usefixtures("torch_single_thread")

NAME = "avel"


def test_attention_sums_to_one_over_positions():
    head = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28).eval()
    with torch.no_grad():
        alpha = head(*random_inputs(h=5, w=3))["attention"]
    assert alpha.shape == (2, 10, 15)
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2, 10))


def test_train_defaults():
    assert train_defaults(NAME, "fully")["lr"] == 1e-3 and train_defaults(NAME, "fully")["batch_size"] == 64
