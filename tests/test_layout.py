"""pipeline/layout.py is the one place for file names: no file-name literal elsewhere in the
library or the stages, and no name in layout.py without a user."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from pipeline import layout

REPO = Path(__file__).resolve().parents[1]
# a file name with a stem (``best.pt``, ``{split}_order.h5``), or a name suffix of the store
FILE_NAME = re.compile(r"^[\w{}:\-./]*\w[\w{}:\-]*\.(h5|pt|pth|json|csv|md|html|txt|tsv|png|mp4|yaml)$"
                       r"|^_noisy|^_ft$|(_noisy|_ft)\.h5$")
# Weights are described by data beside their encoder (STYLE: file name, checksum, source), and
# the params file's default name is defined once in pipeline/config.py.
ALLOWED = {("pipeline/config.py", "params.yaml")}
ALLOWED_DIRS = ("pipeline/encoders/",)


def _code_files() -> list[Path]:
    return sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "stages").glob("*.py")])


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def stray_literals(files: list[Path], root: Path = REPO) -> list[str]:
    """``path:line: 'literal'`` for each file-name literal outside layout.py (docstrings and
    messages aside: a literal with a space is prose)."""
    found = []
    for f in files:
        rel = str(f.relative_to(root))
        if rel == "pipeline/layout.py" or rel.startswith(ALLOWED_DIRS):
            continue
        tree = ast.parse(f.read_text())
        skip = _docstrings(tree) | {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)
                                    for v in n.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):  # f"{x}_noisy.h5": the constant parts joined
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                text = node.value
            else:
                continue
            if " " not in text and FILE_NAME.search(text) and (rel, text) not in ALLOWED:
                found.append(f"{rel}:{node.lineno}: {text!r}")
    return found


def test_no_file_name_literal_outside_layout():
    found = stray_literals(_code_files())
    assert not found, "file names belong in pipeline/layout.py:\n" + "\n".join(found)


def test_the_literal_check_finds_a_stray_name(tmp_path):
    stage = tmp_path / "stages" / "x.py"
    stage.parent.mkdir()
    stage.write_text('"""A doc naming best.pt is fine."""\nA = "best.pt"\nB = f"{A}_noisy.h5"\n'
                     'C = "see last.pt there"\n')
    assert stray_literals([stage], tmp_path) == ["stages/x.py:2: 'best.pt'",
                                                 "stages/x.py:3: '{}_noisy.h5'"]


def test_every_layout_name_has_a_user():
    """A public name of layout.py is used by the library or a stage (or by a layout function
    that is)."""
    code = "\n".join(f.read_text() for f in _code_files() if f.name != "layout.py")
    own = (REPO / "pipeline" / "layout.py").read_text()
    unused = []
    for name in (n for n in vars(layout) if not n.startswith("_") and n not in ("Path", "annotations")):
        if re.search(rf"\b{name}\b", code):
            continue
        users = re.findall(r"^def (\w+)\(.*?(?=^def |\Z)", own, re.M | re.S)
        if any(re.search(rf"\b{name}\b", body) and re.search(rf"\b{fn}\b", code)
               for fn, body in zip(users, re.split(r"^def ", own, flags=re.M)[1:])):
            continue
        unused.append(name)
    assert not unused, unused


def test_name_helpers():
    assert layout.background_only_file("visual_feature.h5") == "visual_feature_noisy.h5"
    assert layout.background_only_name("vgg19") == "vgg19_noisy"
    assert layout.tuned_name("resnet50") == "resnet50_ft"
    assert str(layout.best_checkpoint("m", "val")) == "m/best_val.pt"
    assert layout.order_file("p", "val", match=True).name == "val_order_match.h5"
    assert layout.SHARD_FILE.format(index=3) == "shard_00003.h5"
