"""The one converter of the authors' state dicts (``pipeline.heads._authors``) on a toy module."""
import inspect

import pytest
import torch
from torch import nn

from pipeline.heads import Head, get_head_class, list_heads
from pipeline.heads._authors import AuthorsStateDict, LayoutError
from pipeline.heads._config import HparamError
from pipeline.heads._registry import authors_head


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
        self.out = nn.Linear(4, 2)
        self.register_buffer("trained", torch.tensor(False))


RENAMES = {"enc": "encoder", "enc.1": "norm", "out": "head.0"}  # enc.1 is the longer prefix


def authors(prefix: str = "", conv_head: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"encoder.0.weight": (4, 3), "encoder.0.bias": (4,), "norm.weight": (4,), "norm.bias": (4,),
              "head.0.weight": (2, 4, 1) if conv_head else (2, 4), "head.0.bias": (2,), "dead.weight": (5, 4)}
    return {prefix + k: torch.randn(s, generator=g) for k, s in shapes.items()}


def load(sd: dict[str, torch.Tensor], renames=RENAMES, unused={"dead.weight": (5, 4)}) -> Toy:
    return AuthorsStateDict(sd, "toy (fully)").load_into(Toy(), renames, unused, ours_only=["trained"])


@pytest.mark.parametrize("prefix", ["", "module."])
def test_renames_by_longest_prefix_with_or_without_data_parallel(prefix):
    sd = authors(prefix)
    toy = load(sd)
    assert torch.equal(toy.enc[0].weight, sd[prefix + "encoder.0.weight"])
    assert torch.equal(toy.enc[1].bias, sd[prefix + "norm.bias"])
    assert torch.equal(toy.out.weight, sd[prefix + "head.0.weight"])
    assert not toy.trained  # ours only: keeps its built value


def test_a_kernel_1_conv1d_weight_fills_a_linear():
    sd = authors(conv_head=True)
    toy = load(sd)
    x = torch.randn(3, 4)
    torch.testing.assert_close(toy.out(x), nn.functional.conv1d(x.unsqueeze(-1), sd["head.0.weight"],
                                                                sd["head.0.bias"]).squeeze(-1))


def test_dims_are_read_from_the_shapes():
    sd = AuthorsStateDict(authors("module."), "toy (fully)")
    assert (sd.dim("encoder.0.weight", 1), sd.dim("head.0.bias", 0)) == (3, 2)
    with pytest.raises(LayoutError, match=r"^toy \(fully\): 'head.0.bias' has shape \[2\], expected at "):
        sd.dim("head.0.bias", 1)


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("norm.bias"), "missing key 'norm.bias'"),
    (lambda sd: sd.pop("dead.weight"), "missing key 'dead.weight'"),  # unused, still required
    (lambda sd: sd.update({"head.0.weight": torch.zeros(2, 4, 3)}),
     r"'head.0.weight' has shape \[2, 4, 3\], expected \[2, 4\]"),
    (lambda sd: sd.update({"dead.weight": torch.zeros(4, 5)}),
     r"'dead.weight' has shape \[4, 5\], expected \[5, 4\]"),
    (lambda sd: sd.update({"x": torch.zeros(1), "y": torch.zeros(1)}), r"unexpected key 'x' \(and 1 more\)"),
    (lambda sd: sd.update({"x": 1}), "'x' is a int, not a tensor"),
])
def test_the_first_fault_is_one_line_naming_the_key(edit, message):
    sd = authors()
    edit(sd)
    with pytest.raises(LayoutError, match=f"^toy \\(fully\\): {message}$"):
        load(sd)


def test_a_key_is_used_once():
    with pytest.raises(LayoutError, match=r"^toy \(fully\): key 'head.0.weight' used twice$"):
        load(authors(), unused={"head.0.weight": (2, 4)})


def test_one_rule_for_overrides_against_the_checkpoint():
    """Every converter builds through ``authors_head``: the checkpoint's widths win, an override
    that agrees with one is fine, one that contradicts it names the key and both values, the
    others apply; each value is checked as heads.<name> in params.yaml is."""
    cls, dims = get_head_class("avel"), {"visual_dim": 8, "audio_dim": 6, "num_classes": 3}
    fixed = {"att_hidden": 16, "att_dim": 4, "lstm_hidden": 5, "fc_hidden": 7}
    head = authors_head(cls, "fully", dims, fixed, {"lstm_hidden": 5, "audio_term": "broadcast"},
                        "avel (fully)")
    assert head.cfg == cls.Config(16, 4, "broadcast", 5, 7)
    with pytest.raises(ValueError, match=r"^avel \(fully\): 'lstm_hidden' is fixed by the authors' "
                                         r"checkpoint \(5\); --set lstm_hidden=9 contradicts it$"):
        authors_head(cls, "fully", dims, fixed, {"lstm_hidden": 9}, "avel (fully)")
    with pytest.raises(HparamError, match=r"^head 'avel' has no hyperparameter 'beta'; valid: "):
        authors_head(cls, "fully", dims, fixed, {"beta": 1}, "avel (fully)")
    with pytest.raises(HparamError, match=r"^expected one of 'position', 'broadcast' like the "
                                          r"default 'position', got 'paper'$"):
        authors_head(cls, "fully", dims, fixed, {"audio_term": "paper"}, "avel (fully)")


def test_every_head_converts_with_the_base_signature():
    base = inspect.signature(Head.from_authors_state_dict).parameters
    for name in list_heads():
        params = inspect.signature(get_head_class(name).from_authors_state_dict).parameters
        assert [(p.name, p.kind, p.default) for p in params.values()] == \
            [(p.name, p.kind, p.default) for p in base.values()], name
