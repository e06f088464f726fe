"""The on-disk layout: every folder and file name the pipeline reads or writes, in one place.

Folders come from ``params.yaml`` ``paths:``; the names inside them are here. Names that the
published AVE files use (``labels.h5``, ``{split}_order.h5``, ``*_noisy.h5`` ...) are kept as
published, so community tools read our files and we read theirs.

One word for the extra training videos that hold no event: *background-only* (AVE's
reference code calls their files ``*_noisy.h5``; that suffix is the file name, nothing more).
"""
from __future__ import annotations

from pathlib import Path

# ---- the AVE data root (raw/<name>/) -------------------------------------------------------
ANNOTATIONS_FILE = "Annotations.txt"
VIDEO_DIR = "AVE"  # videos live in <root>/AVE/<VideoID>.mp4
SPLIT_FILE = "{split}Set.txt"  # <root>/{train,val,test}Set.txt
VIDEO_SUFFIX = ".mp4"  # <root>/AVE/<VideoID>.mp4
SYNTH_FILE = "synth.json"  # <root>/synth.json: what the synthetic set drew (pipeline.data.synth)
CML_DIR = "cml"  # <root>/cml/{train,val,test}Set.txt: the cross-modality localization split
BACKGROUND_FILE = "backgroundSet.txt"  # <root>/backgroundSet.txt: background-only video ids
SPLITS = ("train", "val", "test")

# ---- prepared labels and orders (<paths.prepared>/) ----------------------------------------
MANIFEST_FILE = "manifest.csv"  # one row per annotation line (pipeline.data.prepare)
REPORT_FILE = "report.md"  # every problem found, file:line
CATEGORIES_FILE = "categories.json"  # class names in label-index order
LABELS_FILE = "labels.h5"  # avadataset (N, 10, C+1) one-hot, background last
VIDEO_LABELS_FILE = "mil_labels.h5"  # avadataset (N, C+1): the event class alone (published)
ORDER_FILE = "{split}_order.h5"  # dataset "order": a split's row indices
ORDER_MATCH_FILE = "{split}_order_match.h5"  # the cml split's row indices
BACKGROUND_MANIFEST_FILE = "background_manifest.csv"  # the background-only videos probed
BACKGROUND_LABELS_FILE = "labels_noisy.h5"  # their video labels (B, C+1), background alone

# ---- the published feature files (the authors' data/ folder) -------------------------------
PUBLISHED_VISUAL_FILE = "visual_feature.h5"  # Keras VGG-19 pool5 maps (4143, 10, 7, 7, 512)
PUBLISHED_AUDIO_FILE = "audio_feature.h5"  # VGGish embeddings (4143, 10, 128)
# ... and the rest of the community export's folder (pipeline.features.community)
PUBLISHED_VISUAL_VEC_FILE = "visual_feature_vec.h5"  # pooled visual features (N, 10, 512)
RIGHT_LABELS_FILE = "right_labels.h5"  # per-segment labels, as the reference scripts read them
PROB_LABELS_FILE = "prob_label.h5"  # soft labels (the reference weak scripts)
CLOSS_LABELS_FILE = "labels_closs.h5"  # labels of the contrastive-loss script
INVALID_ROWS_FILE = "invalid_rows.tsv"  # rows without features, with the video id and reason
EXPORT_README = "README.txt"  # what the export holds and what it left out

# ---- features (<paths.features>/) ----------------------------------------------------------
BACKGROUND_SUFFIX = "_noisy"  # <name>_noisy.h5: the background-only videos of <name>.h5
TUNED_SUFFIX = "_ft"  # <encoder>_ft.h5: features of the CACE-tuned encoder
PARTIAL_SUFFIX = ".partial"  # <name>.h5.partial/: committed shards of an unfinished extraction
SHARD_FILE = "shard_{index:05d}.h5"  # a committed shard in <name>.h5.partial/

# ---- reports (<paths.reports>/) -------------------------------------------------------------
PER_VIDEO_FILE = "per_video.json"  # each evaluated video's score (results table: bootstrap)
RUN_FILE = "run.json"  # the resolved run (stage resolve): train's recipe and the head's overrides
TRAIN_DIR, TRAIN_METRICS = "train", "train.json"  # DVCLive folder and headline metrics of train
EVALUATE_DIR, EVALUATE_METRICS = "evaluate", "evaluate.json"  # ... of evaluate
PAGE_FILE = "index.html"  # a self-contained page (evaluate, localize)
CONFUSION_FILE = "confusion.json"  # labels and counts of the confusion matrix
CONFUSION_PLOT = "confusion_matrix.json"  # DVC's confusion template data (plots/sklearn/)
CONFUSION_IMAGE = "confusion.png"
TIMELINE_IMAGE = "timeline_{index:03d}_{video}.png"  # one test video's timeline (video id made safe)
MATRIX_DIR = "matrix"  # <paths.reports>/matrix/<cell>/, <paths.models>/matrix/<cell>/
ROW_FILE = "row.json"  # one cell's row of the results table
RESULTS_FILES = ("results.json", "results.md", "results.html")  # the results table

# ---- checkpoints (<paths.models>/, <paths.resume>/) ----------------------------------------
BEST = "best.pt"  # = best_val.pt or best_test.pt, as train.select names
BEST_BY = "best_{protocol}.pt"  # best_val.pt (ours), best_test.pt (the released script's checks)
LAST = "last.pt"  # a resume point (never a stage output)
TRAIN_RESUME_DIR = "train"  # <paths.resume>/train/last.pt
FINETUNE_RESUME_DIR = "finetune"  # <paths.resume>/finetune/<fingerprint>/last.pt
FINETUNE_SUMMARY = "finetune.json"  # <paths.finetune>/finetune.json


def feature_file(features: str | Path, name: str) -> Path:
    """``<paths.features>/<name>.h5`` (dvc.yaml writes the same pattern)."""
    return Path(features) / f"{name}.h5"


def background_only_name(name: str) -> str:
    """The store name of ``name``'s background-only videos (``<name>_noisy``)."""
    return f"{name}{BACKGROUND_SUFFIX}"


def background_only_file(file: str) -> str:
    """``visual_feature.h5`` -> ``visual_feature_noisy.h5``: the file of its background-only videos."""
    stem, dot, suffix = file.rpartition(".")
    return f"{stem}{BACKGROUND_SUFFIX}{dot}{suffix}" if dot else f"{file}{BACKGROUND_SUFFIX}"


def tuned_name(encoder: str) -> str:
    """The store name of features from the CACE-tuned ``encoder`` (``<encoder>_ft``)."""
    return f"{encoder}{TUNED_SUFFIX}"


def order_file(prepared: str | Path, split: str, match: bool = False) -> Path:
    """``<paths.prepared>/<split>_order.h5`` (``_order_match.h5``: the cml split)."""
    return Path(prepared) / (ORDER_MATCH_FILE if match else ORDER_FILE).format(split=split)


def best_checkpoint(models: str | Path, protocol: str | None = None) -> Path:
    """``best.pt``, or ``best_<protocol>.pt`` for ``protocol`` in ``val | test``."""
    return Path(models) / (BEST_BY.format(protocol=protocol) if protocol else BEST)


def tuned_weights(finetune: str | Path, encoder: str) -> Path:
    """``<paths.finetune>/<encoder>.pth``: the tuned encoder in its own checkpoint format."""
    return Path(finetune) / f"{encoder}.pth"
