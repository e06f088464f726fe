"""`python -m pipeline.import_checkpoint`: the authors' state dict -> a checkpoint that
`evaluate` reads, with the authors' outputs."""
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import authors_reference as R
import cmbs_authors
from pipeline.data.ave import export_labels, load_annotations
from pipeline.evaluation.evaluate import evaluate
from pipeline.features.store import import_community
from pipeline.heads import from_authors_state_dict
from pipeline.import_checkpoint import main
from pipeline.training import checkpoint as ckpt_io

pytestmark = pytest.mark.usefixtures("torch_single_thread")

REAL_AVE = Path(__file__).resolve().parents[1] / "raw" / "ave"


def ave_categories() -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_annotations(REAL_AVE, splits=False).categories


@pytest.fixture
def tiny_ave(tmp_path) -> Path:
    """One clip a category of AVE (28, in Annotations.txt order), 4 train, 4 val, 20 test."""
    root = tmp_path / "ave"
    root.mkdir()
    lines = [f"{c}&vid{i:02d}&good&{i % 5}&{5 + i % 5}" for i, c in enumerate(ave_categories())]
    (root / "Annotations.txt").write_text("\n".join(lines) + "\n")
    for name, part in (("trainSet.txt", lines[:4]), ("valSet.txt", lines[4:8]), ("testSet.txt", lines[8:])):
        (root / name).write_text("\n".join(part) + "\n")
    return root


def test_imported_checkpoint_is_evaluated_with_the_authors_outputs(tiny_ave, tmp_path):
    sd = R.random_state_dict(R.layout("avel", "fully"), seed=4)
    src, dst = tmp_path / "AV_att.pth", tmp_path / "models" / "best.pt"
    torch.save(sd, src)
    main(["--head", "avel", "--setting", "fully", "--ave-root", str(tiny_ave), str(src), str(dst)])

    head, ckpt = ckpt_io.load_head(dst)
    assert ckpt["categories"] == ave_categories() and ckpt["params"]["train"] == {"visual": "vgg19",
                                                                                  "audio": "vggish"}
    g = torch.Generator().manual_seed(0)
    visual, audio = torch.randn(28, 10, 7, 7, 512, generator=g).relu(), torch.randn(28, 10, 128, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(head(visual, audio)["logits"],
                                   from_authors_state_dict("avel", sd, "fully").eval()(visual, audio)["logits"])
        expected_pred = head(visual, audio)["logits"].argmax(-1)[8:]  # the test rows

    # the published feature layout, imported into the store; labels from the annotation files
    for name, kind, data in (("vgg19", "visual", visual), ("vggish", "audio", audio)):
        with h5py.File(tmp_path / f"{kind}_feature.h5", "w") as f:
            f.create_dataset("avadataset", data=data.numpy())
        import_community(tmp_path / f"{kind}_feature.h5", tmp_path / "features" / f"{name}.h5", kind)
    export_labels(tiny_ave, tmp_path / "prepared")
    res = evaluate(dst, tmp_path / "prepared", tmp_path / "features", "vgg19", "vggish", None, split="test")
    with h5py.File(tmp_path / "prepared" / "labels.h5") as f:
        truth = np.asarray(f["avadataset"][8:]).argmax(-1)
    assert res["accuracy"] == pytest.approx(float((expected_pred.numpy() == truth).mean()))
    with pytest.raises(ValueError, match="trained on train.visual='vgg19', evaluation asked for 'resnet50'"):
        evaluate(dst, tmp_path / "prepared", tmp_path / "features", "resnet50", "vggish", None)


SMALL_CMBS = dict(cv=24, ca=8, fc=16, hidden=12, d=16, enc_ff=32, dec_ff=24, classes=28)


@pytest.mark.parametrize("head,setting,layout", [
    ("cmbs", "fully", cmbs_authors.cmbs_layout("fully", **SMALL_CMBS)),
    ("cmbs", "weak", cmbs_authors.cmbs_layout("weak", **SMALL_CMBS)),
    ("cace", "fully", cmbs_authors.cace_layout(**SMALL_CMBS, a_fc=6)),
])
def test_cmbs_and_cace_checkpoints_import_through_the_cli(head, setting, layout, tiny_ave, tmp_path):
    """DataParallel's ``module.`` keys, CMBS's weak Conv1d classifier and CACE-Net's own buffer
    all survive the CLI, and ``load_head`` rebuilds the head with the authors' outputs."""
    sd = cmbs_authors.random_state_dict(layout, seed=5, dtype=torch.float32)
    src, dst = tmp_path / "model.pth", tmp_path / "best.pt"
    torch.save(sd, src)
    main(["--head", head, "--setting", setting, "--ave-root", str(tiny_ave), str(src), str(dst)])
    loaded, ckpt = ckpt_io.load_head(dst)
    assert (ckpt["head"], ckpt["setting"], ckpt["dims"]) == (head, setting, {"visual_dim": 24, "audio_dim": 8,
                                                                             "num_classes": 28})
    assert ckpt["hparams"]["variant"] == "code" and ckpt["hparams"]["d_model"] == 16
    direct = from_authors_state_dict(head, sd, setting).eval()
    g = torch.Generator().manual_seed(0)
    visual, audio = torch.randn(2, 10, 3, 2, 24, generator=g), torch.randn(2, 10, 8, generator=g)
    with torch.no_grad():
        ours, theirs = loaded(visual, audio), direct(visual, audio)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k != "bece_key")  # bece_key: + noise
    assert torch.equal(loaded.predict(ours), direct.predict(theirs))
    if head == "cace":
        assert bool(loaded.bece_trained)  # their evaluation switches BECE on


def test_errors_are_one_line_naming_the_file(tiny_ave, tmp_path, capsys):
    whole = tmp_path / "PSP_fully.pt"
    torch.save(torch.nn.Linear(2, 2), whole)  # what the authors' scripts write: a pickled module
    wrong = tmp_path / "psp_state.pth"
    torch.save(R.random_state_dict(R.layout("psp", "fully")), wrong)
    refused = (r"not a readable state dict: it refers to Python code or objects "
               r"\(torch\.nn\.modules\.linear\.Linear\).*save model\.state_dict\(\)")
    for src, head, message in ((whole, "psp", refused),
                               (wrong, "avel", "avel \\(fully\\): missing key 'affine_video.weight'"),
                               (tmp_path / "absent.pth", "psp", "no such file")):
        with pytest.raises(SystemExit) as e:
            main(["--head", head, "--setting", "fully", "--ave-root", str(tiny_ave), str(src),
                  str(tmp_path / "best.pt")])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1, err
        assert err[0].startswith(f"error: {src}: ") and "weights_only" not in err[0], err
        assert re.search(message, err[0]), err
    assert not (tmp_path / "best.pt").exists()


def test_set_gives_hyperparameters_the_state_dict_lacks(tiny_ave, tmp_path, capsys):
    layout = cmbs_authors.cace_layout(**SMALL_CMBS, a_fc=6)
    src, dst = tmp_path / "cace.pth", tmp_path / "best.pt"
    torch.save(cmbs_authors.random_state_dict(layout, seed=5, dtype=torch.float32), src)
    main(["--head", "cace", "--setting", "fully", "--ave-root", str(tiny_ave), "--set", "bece_lambda=0",
          "--set", "psi=0.25", "--set", "gamma=0.5", str(src), str(dst)])
    hp = ckpt_io.load(dst)["hparams"]
    assert hp["bece_lambda"] == 0 and hp["psi"] == 0.25 and hp["gamma"] == 0.5
    assert "set {'bece_lambda': 0.0, 'psi': 0.25, 'gamma': 0.5}" in capsys.readouterr().out  # typed
    sd = R.random_state_dict(R.layout("psp", "fully"))
    torch.save(sd, tmp_path / "psp.pth")
    main(["--head", "psp", "--setting", "fully", "--ave-root", str(tiny_ave), "--set", "tau_fully=0.095",
          str(tmp_path / "psp.pth"), str(dst)])
    assert ckpt_io.load(dst)["hparams"]["tau_fully"] == 0.095


@pytest.mark.parametrize("sets,message", [
    (["alhpa=0.3"], r"^error: --set alhpa: head 'cmbs' has no hyperparameter 'alhpa'; valid: .*\balpha, "),
    (["alpha"], r"^error: --set 'alpha': expected KEY=VALUE$"),
    (["alpha=[1, 2"], r"^error: --set alpha: '\[1, 2' is not a YAML scalar$"),
])
def test_set_refuses_unknown_keys_and_bad_values(sets, message, tiny_ave, tmp_path, capsys):
    args = ["--head", "cmbs", "--setting", "fully", "--ave-root", str(tiny_ave)]
    for s in sets:
        args += ["--set", s]
    with pytest.raises(SystemExit) as e:
        main(args + [str(tmp_path / "absent.pth"), str(tmp_path / "best.pt")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and re.search(message, err), err


@pytest.mark.parametrize("head,key,shape,message", [
    # fa.0.weight gives embed_hidden; a wrong width showed up as a misfit of fa.1.weight
    ("psp", "fa.0.weight", (255, 128), r"'fa\.0\.weight' \(shape \[255, 128\], sizes read from it\) "
                                       r"does not fit 'fa\.1\.weight': shape \[128, 256\], expected \[128, 255\]"),
    # L2.weight gives the classes; a wrong count showed up as a misfit of L2.bias
    ("avel", "L2.weight", (30, 64), r"'L2\.weight' \(shape \[30, 64\], sizes read from it\) "
                                    r"does not fit 'L2\.bias': shape \[29\], expected \[30\]"),
])
def test_a_misshapen_sized_key_is_named(head, key, shape, message, tiny_ave, tmp_path, capsys):
    sd = R.random_state_dict(R.layout(head, "fully"))
    sd[key] = torch.zeros(shape)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(SystemExit) as e:
        main(["--head", head, "--setting", "fully", "--ave-root", str(tiny_ave), str(tmp_path / "bad.pth"),
              str(tmp_path / "best.pt")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and re.search(message, err), err
