"""Leave-one-out kNN retrieval accuracy of an encoder on the labelled images of the shared kit.

    .venv/bin/python -m bench.knn_eval [--encoder KEY] [--json]

For every image the k nearest others (cosine) vote on its label (majority; ties go to the
label of the nearest tied neighbour). Neighbours sharing the query's group (LC25000
near-duplicate group, EBHI-Seg case, PAD-UFES-20 patient) are excluded where the row says so;
those rows are the headline numbers. Each accuracy is shown next to the majority-class rate
(what always answering the commonest class scores). Results are also written to
bench/results/knn_<key>.json. Data come from $LAMINA_SHARED_DATA (default ../shared/data).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True)
class Dataset:
    name: str
    folder: str  # relative to the shared data root
    label_column: str
    group_column: str | None  # neighbours sharing this id are excluded in the headline row
    group_meaning: str


DATASETS = (
    Dataset("pad_ufes20", "derm/pad_ufes20_subset", "diagnostic", "patient_id", "patient"),
    Dataset(
        "lc25000_lung",
        "path_tiles/lc25000_lung_224",
        "class_code",
        "group_id",
        "near-duplicate group",
    ),
    Dataset("ebhi_seg", "path_tiles/ebhi_seg_224", "class_code", "case_id", "case"),
    Dataset("crc_he", "path_tiles/crc_he_224", "class_code", None, ""),
)


def shared_data_root() -> Path:
    return Path(os.environ.get("LAMINA_SHARED_DATA", REPO / ".." / "shared" / "data")).resolve()


def load_dataset(root: Path, ds: Dataset) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
    folder = root / ds.folder
    with open(folder / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    images = []
    for row in rows:
        with Image.open(folder / row["filename"]) as im:
            images.append(np.asarray(im.convert("RGB")))
    labels = np.array([row[ds.label_column] for row in rows])
    groups = np.array([row[ds.group_column] for row in rows]) if ds.group_column else None
    return images, labels, groups


def knn_predict(
    vectors: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None, k: int = 5
) -> np.ndarray:
    """Leave-one-out k-NN labels (cosine on L2-normalised vectors; self and same group excluded)."""
    v = np.asarray(vectors, np.float64)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    if groups is not None:
        sims[groups[:, None] == groups[None, :]] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    preds = []
    for i, nbrs in enumerate(order):
        nbrs = nbrs[np.isfinite(sims[i, nbrs])]
        votes = Counter(labels[nbrs].tolist())
        if not votes:
            preds.append("")
            continue
        top = max(votes.values())
        preds.append(next(lab for lab in labels[nbrs] if votes[lab] == top))  # nearest tied label
    return np.array(preds)


def score(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    classes = sorted(set(labels.tolist()))
    counts = Counter(labels.tolist())
    return {
        "accuracy": float((preds == labels).mean()),
        "balanced_accuracy": float(np.mean([(preds[labels == c] == c).mean() for c in classes])),
        "majority_rate": max(counts.values()) / len(labels),
        "chance_balanced": 1.0 / len(classes),
    }


def evaluate(encoder_key: str, k: int = 5, batch_size: int | None = None) -> dict[str, Any]:
    from lamina.encoders import create_encoder

    encoder = create_encoder(encoder_key, batch_size=batch_size)
    root = shared_data_root()
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for ds in DATASETS:
        if not (root / ds.folder / "labels.csv").is_file():
            skipped.append(f"{ds.name}: {root / ds.folder} not found")
            continue
        images, labels, groups = load_dataset(root, ds)
        t0 = time.perf_counter()
        vectors = encoder.embed(images)
        seconds = time.perf_counter() - t0
        common = {
            "dataset": ds.name,
            "n": len(labels),
            "classes": len(set(labels.tolist())),
            "embed_s": round(seconds, 3),
            "images_per_s": round(len(labels) / seconds, 1),
        }
        variants = [("all neighbours", None)]
        if groups is not None:
            variants.insert(0, (f"excl. same {ds.group_meaning}", groups))
        for j, (variant, g) in enumerate(variants):
            result = score(knn_predict(vectors, labels, g, k), labels)
            rows.append({**common, "variant": variant, "headline": j == 0, **result})
    return {
        "encoder": encoder_key,
        "fingerprint": encoder.fingerprint,
        "k": k,
        "embed_dim": encoder.embed_dim,
        "data_root": str(root),
        "rows": rows,
        "skipped": skipped,
    }


def format_table(report: dict[str, Any]) -> str:
    head = (
        f"{'dataset':14s} {'variant':33s} {'n':>5s} {'acc':>6s} {'majority':>8s} "
        f"{'bal.acc':>7s} {'chance':>6s}"
    )
    lines = [
        f"encoder {report['encoder']} ({report['fingerprint']}), k={report['k']}, "
        "leave-one-out, cosine",
        head,
        "-" * len(head),
    ]
    for r in report["rows"]:
        mark = "*" if r["headline"] else " "
        lines.append(
            f"{r['dataset']:14s} {mark}{r['variant']:32s} {r['n']:5d} {r['accuracy']:6.3f} "
            f"{r['majority_rate']:8.3f} {r['balanced_accuracy']:7.3f} "
            f"{r['chance_balanced']:6.3f}"
        )
    lines.append("* headline row (neighbours sharing the query's group excluded, where known)")
    lines += [f"skipped {s}" for s in report["skipped"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="classic/stain-texture")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    report = evaluate(args.encoder, k=args.k, batch_size=args.batch_size)
    if not report["rows"]:
        print("no dataset found under " + report["data_root"], file=sys.stderr)
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"knn_{args.encoder.replace('/', '_')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else format_table(report) + f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
