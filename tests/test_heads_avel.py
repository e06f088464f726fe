"""AVEL head (Tian et al. ECCV 2018): attention, the authors' checkpoints, training defaults
(shared checks in test_heads_common.py)."""
import pytest
import torch
from test_heads_common import random_inputs

import authors_reference as R
from pipeline.heads import build_head, from_authors_state_dict, train_defaults
from pipeline.heads._avga import AudioGuidedVisualAttention

pytestmark = pytest.mark.usefixtures("torch_single_thread")

NAME = "avel"


def test_attention_sums_to_one_over_positions():
    head = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28, att_dim=15).eval()
    with torch.no_grad():
        alpha = head(*random_inputs(h=5, w=3))["attention"]
    assert alpha.shape == (2, 10, 15)
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2, 10))


def test_audio_term_per_position_and_broadcast():
    """position (code): z_n = w_h . tanh(W_v v_n + g_n); broadcast (paper): w_h . tanh(W_v v_n + W_g a)."""
    torch.manual_seed(0)
    att = AudioGuidedVisualAttention(8, 4, hidden_dim=6, att_dim=3, audio_term="position")
    visual, audio = torch.randn(1, 1, 1, 3, 8), torch.randn(1, 1, 4)
    v_h = torch.relu(att.affine_video(visual.reshape(3, 8)))  # (N, hidden)
    g = att.affine_g(torch.relu(att.affine_audio(audio.reshape(1, 4))))[0]  # (att_dim,)
    for term, content in (("position", att.affine_v(v_h) + g[:, None]), ("broadcast", att.affine_v(v_h) + g)):
        att.audio_term = term
        with torch.no_grad():
            _, alpha = att(visual, audio)
            expected = torch.softmax(att.affine_h(torch.tanh(content)).squeeze(-1), -1)
        torch.testing.assert_close(alpha.reshape(3), expected)
    with pytest.raises(ValueError, match="H\\*W must equal att_dim: got 2x2 maps and att_dim=3"):
        AudioGuidedVisualAttention(8, 4, 6, 3, "position")(torch.randn(1, 1, 2, 2, 8), audio)
    with torch.no_grad():  # broadcast takes any map size
        assert att(torch.randn(1, 1, 2, 2, 8), audio)[1].shape == (1, 1, 4)


@pytest.mark.parametrize("setting", ["fully", "weak"])
def test_authors_checkpoint_gives_the_authors_outputs(setting):
    sd = R.random_state_dict(R.layout(NAME, setting), seed=1)
    head = from_authors_state_dict(NAME, sd, setting).double().eval()
    assert (head.visual_dim, head.audio_dim, head.num_classes) == (512, 128, 28)
    visual, audio = (x.double() for x in random_inputs(h=7, w=7))
    sd64 = {k: v.double() for k, v in sd.items()}
    with torch.no_grad():
        out, theirs = head(visual, audio), R.avel(sd64, setting, audio, visual)
    if setting == "fully":
        R.assert_close_rel(torch.softmax(out["logits"], -1), theirs)
    else:
        R.assert_close_rel(out["video_prob"], theirs[0])
        R.assert_close_rel(out["logits"], theirs[1])


def test_authors_checkpoint_dimensions_are_inferred():
    shapes = R.layout(NAME, "fully")  # ResNet-50 maps (2048), 10 classes
    shapes.update({"affine_video.weight": (512, 2048), "lstm_video.weight_ih_l0": (512, 2048),
                   "lstm_video.weight_ih_l0_reverse": (512, 2048), "L2.weight": (11, 64), "L2.bias": (11,)})
    head = from_authors_state_dict(NAME, R.random_state_dict(shapes), "fully")
    assert (head.visual_dim, head.audio_dim, head.num_classes) == (2048, 128, 10)
    assert head.hparams["att_dim"] == 49 and head.hparams["audio_term"] == "position"


def test_train_defaults():
    assert train_defaults(NAME, "fully")["lr"] == 1e-3 and train_defaults(NAME, "fully")["batch_size"] == 64
