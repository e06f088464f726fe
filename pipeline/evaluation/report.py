"""Results table over heads x settings, with the papers' reported numbers beside ours.

Each report-matrix cell writes one row (``cell_row``); ``write_table`` gathers them into
``results.json`` (a list of rows) and ``results.md``. Row keys (``ROW_KEYS``):
``head, setting, visual, audio, accuracy, params, train_seconds, paper_accuracy`` plus
``paper_params``, ``paper_source`` and ``note`` (e.g. 'not defined by the paper'); ``cml`` rows
(M2N's cross-modality localization, accuracy = mean of A2V and V2A) add ``cross_modal`` and
``paper_cross_modal`` (``{"a2v", "v2a"}``). Accuracies are percentages (as the papers' tables);
``null`` where not available.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pipeline.runtime import atomic_write_json, atomic_write_text

ROW_KEYS = ("head", "setting", "visual", "audio", "accuracy", "params", "train_seconds",
            "paper_accuracy")
EXTRA_KEYS = ("paper_params", "paper_source", "note")

# Reported test accuracy (%) on AVE with VGG-19 visual + VGG-like (VGGish) audio features.
PAPER_ACCURACY: dict[tuple[str, str], tuple[float, str]] = {
    ("avel", "fully"): (72.7, "VSCG Table I / CACE-Net Table 5 (AVEL, audio-guided attention)"),
    ("avel", "weak"): (66.7, "PSP Table 4 / CMBS Table 2 / VSCG Table I"),
    ("psp", "fully"): (77.8, "PSP Table 4"),
    ("psp", "weak"): (73.5, "PSP Table 4"),
    ("cmbs", "fully"): (79.3, "CMBS Table 1"),
    ("cmbs", "weak"): (74.2, "CMBS Table 2"),
    ("cace", "fully"): (80.8, "CACE-Net Table 5 (VGG-like, VGG-19)"),
    ("m2n", "fully"): (79.5, "M2N Table 2"),
    ("m2n", "cml"): (52.4, "M2N Table 1 (cross-modality localization, average of A2V and V2A)"),
    ("vscg", "fully"): (79.7, "VSCG Table I"),
    ("vscg", "weak"): (74.8, "VSCG Table I"),
    ("audio_only", "fully"): (59.5, "AVEL 'A' (VGG-like), as cited in M2N Table 2 / CACE-Net Table 5"),
    ("visual_only", "fully"): (55.3, "AVEL 'V' (VGG-19), as cited in M2N Table 2 / CACE-Net Table 5"),
}
# Cross-modality localization accuracy (%) per direction, M2N Table 1.
PAPER_CROSS_MODAL: dict[str, dict[str, float]] = {"m2n": {"a2v": 51.2, "v2a": 53.6}}
# Trainable parameters (millions) reported in VSCG Table II (fully supervised).
PAPER_PARAMS_M: dict[str, float] = {"psp": 1.7, "cmbs": 14.4, "vscg": 2.6}

NOT_DEFINED = "not defined by the paper"


def paper_accuracy(head: str, setting: str) -> tuple[Optional[float], Optional[str]]:
    return PAPER_ACCURACY.get((head, setting), (None, None))


def cell_row(head: str, setting: str, visual: str, audio: str,
             result: Optional[dict[str, Any]], note: str = "") -> dict[str, Any]:
    """One table row from ``evaluate`` output (``None`` = cell not run, with ``note``)."""
    acc, src = paper_accuracy(head, setting)
    pm = PAPER_PARAMS_M.get(head) if setting == "fully" else None
    row = {"head": head, "setting": setting, "visual": visual, "audio": audio,
           "accuracy": round(100 * result["accuracy"], 2) if result else None,
           "params": int(result["num_parameters"]) if result else None,
           "train_seconds": round(float(result["train_seconds"]), 2) if result else None,
           "paper_accuracy": acc, "paper_params": int(pm * 1e6) if pm else None,
           "paper_source": src, "note": note}
    if setting == "cml":
        row["cross_modal"] = ({k: round(100 * v, 2) for k, v in result["cross_modal"].items()}
                              if result else None)
        row["paper_cross_modal"] = PAPER_CROSS_MODAL.get(head)
    return row


def _fmt(v, spec: str = "") -> str:
    return "–" if v is None else format(v, spec)


def markdown(rows: list[dict[str, Any]]) -> str:
    """Papers' layout: one line a head, fully and weak side by side; then M2N Table 1's layout
    (A2V, V2A, average) for the heads with a cml row."""
    heads = list(dict.fromkeys(r["head"] for r in rows if r["setting"] != "cml"))
    by = {(r["head"], r["setting"]): r for r in rows}
    feats = sorted({f"{r['visual']} + {r['audio']}" for r in rows})
    out = ["# AVE localization results (test segment accuracy, %)", "",
           f"Features: {', '.join(feats)}. Paper numbers: VGG-19 + VGG-like (VGGish) rows of the "
           "papers' tables. Params: trainable parameters of our head (fully / weak where they "
           "differ; the paper's where reported). "
           "Time: our training wall time.", "",
           "| head | fully (ours) | fully (paper) | weak (ours) | weak (paper) | params (ours) "
           "| params (paper) | train s (fully / weak) | notes |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for h in heads:
        f, w = by.get((h, "fully"), {}), by.get((h, "weak"), {})
        ps = [r.get("params") for r in (f, w) if r.get("params") is not None]
        params = " / ".join(f"{x:,}" for x in dict.fromkeys(ps)) if ps else None
        notes = "; ".join(f"{s}: {r['note']}" for s, r in (("fully", f), ("weak", w))
                          if r and r.get("note"))
        out.append(f"| {h} | {_fmt(f.get('accuracy'), '.1f')} | {_fmt(f.get('paper_accuracy'), '.1f')} "
                   f"| {_fmt(w.get('accuracy'), '.1f')} | {_fmt(w.get('paper_accuracy'), '.1f')} "
                   f"| {_fmt(params)} | {_fmt(f.get('paper_params'), ',')} "
                   f"| {_fmt(f.get('train_seconds'), '.0f')} / {_fmt(w.get('train_seconds'), '.0f')} "
                   f"| {notes} |")
    out += _cml_markdown([r for r in rows if r["setting"] == "cml"])
    sources = sorted({r["paper_source"] for r in rows if r.get("paper_source")})
    out += ["", "Sources: " + "; ".join(sources) + "; params: VSCG Table II.", ""]
    return "\n".join(out)


def _cml_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """M2N Table 1's layout: exact-window-match accuracy per direction and their average."""
    if not rows:
        return []
    defined = [r for r in rows if r.get("note") != NOT_DEFINED]
    out = ["", "## Cross-modality localization (cml; test accuracy, %, exact window match)", "",
           "A2V: the audio of the event segments is the query, the visual segments are searched; "
           "V2A the converse. Average: their mean (M2N Table 1).", ""]
    if defined:
        out += ["| head | A2V (ours) | A2V (paper) | V2A (ours) | V2A (paper) | average (ours) "
                "| average (paper) | params (ours) | train s | notes |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in defined:
        xm, pxm = r.get("cross_modal") or {}, r.get("paper_cross_modal") or {}
        out.append(f"| {r['head']} | {_fmt(xm.get('a2v'), '.1f')} | {_fmt(pxm.get('a2v'), '.1f')} "
                   f"| {_fmt(xm.get('v2a'), '.1f')} | {_fmt(pxm.get('v2a'), '.1f')} "
                   f"| {_fmt(r.get('accuracy'), '.1f')} | {_fmt(r.get('paper_accuracy'), '.1f')} "
                   f"| {_fmt(r.get('params'), ',')} | {_fmt(r.get('train_seconds'), '.0f')} "
                   f"| {r.get('note') or ''} |")
    undefined = [r["head"] for r in rows if r.get("note") == NOT_DEFINED]
    if undefined:
        out += ["", f"Not defined by the paper (no cml setting): {', '.join(undefined)}."]
    return out


def write_table(rows: list[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in rows:
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ValueError(f"result row {r.get('head')}/{r.get('setting')} lacks {missing}")
    jp, mp = out_dir / "results.json", out_dir / "results.md"
    atomic_write_json(jp, rows, indent=1)
    atomic_write_text(mp, markdown(rows))
    return jp, mp
