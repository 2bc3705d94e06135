"""The Path/Derm Foundation workflow end to end on real data (docs/worked-example.md).

    .venv/bin/python -m bench.worked_example [--home DIR] [--seed 0]

Indexes PAD-UFES-20 (derm photos), LC25000 lung tiles and EBHI-Seg colorectal tiles with the
classic encoder and with test/tiny-vit (a deterministic fake: the "no signal beyond colour
statistics" row), runs `lamina probe` on each through the real CLI, and writes
bench/results/worked_example.json plus docs/img/worked_example_auroc.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LAMINA_SHARED_DATA") or REPO.parent / "shared" / "data").resolve()
LAMINA = str(REPO / ".venv" / "bin" / "lamina")

DATASETS: dict[str, dict[str, Any]] = {
    "derm": {
        "dir": DATA / "derm" / "pad_ufes20_subset",
        "label": "diagnostic",
        "split_by": "patient_id",
        "title": "PAD-UFES-20 (6 diagnoses, split by patient)",
    },
    "lung": {
        "dir": DATA / "path_tiles" / "lc25000_lung_224",
        "label": "class_code",
        "split_by": "group_id",
        "title": "LC25000 lung (3 classes, split by group_id)",
    },
    "ebhi": {
        "dir": DATA / "path_tiles" / "ebhi_seg_224",
        "label": "class_code",
        "split_by": "case_id",
        "title": "EBHI-Seg colorectal (6 classes, split by case)",
    },
}
ENCODERS = {"classic": "classic/stain-texture", "tinyvit": "test/tiny-vit"}


def lamina(home: Path, *args: str, log: list[str]) -> str:
    cmd = [LAMINA, "--home", str(home), *args]
    log.append(shlex.join(["lamina", "--home", str(home), *args]))
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"command failed ({res.returncode}): {shlex.join(cmd)}")
    return res.stdout


def run(home: Path, seed: int) -> dict[str, Any]:
    commands: list[str] = []
    results: dict[str, Any] = {"seed": seed, "datasets": {}, "commands": commands}
    for ds, spec in DATASETS.items():
        results["datasets"][ds] = {
            "title": spec["title"],
            "label_column": spec["label"],
            "split_by": spec["split_by"],
            "encoders": {},
        }
        for short, key in ENCODERS.items():
            col = f"{ds}-{short}"
            extra = ["--allow-test-encoder"] if key.startswith("test/") else []
            t0 = time.perf_counter()
            lamina(
                home,
                "index",
                str(spec["dir"] / "images"),
                "--collection",
                col,
                "--encoder",
                key,
                "--manifest",
                str(spec["dir"] / "labels.csv"),
                "--source-column",
                "filename",
                "--no-progress",
                "--json",
                *extra,
                log=commands,
            )
            t1 = time.perf_counter()
            report = json.loads(
                lamina(
                    home,
                    "probe",
                    "--collection",
                    col,
                    "--label-column",
                    spec["label"],
                    "--split-by",
                    spec["split_by"],
                    "--seed",
                    str(seed),
                    "--json",
                    log=commands,
                )
            )
            report["seconds"] = {
                "index": round(t1 - t0, 1),
                "probe": round(time.perf_counter() - t1, 1),
            }
            results["datasets"][ds]["encoders"][key] = report
            print(
                f"{col}: AUROC@100% {report['fractions'][-1]['auroc']['value']:.3f}",
                file=sys.stderr,
            )
    return results


def table(results: dict[str, Any]) -> str:
    lines = []
    for entry in results["datasets"].values():
        lines += [
            f"**{entry['title']}** — label `{entry['label_column']}`, split by "
            f"`{entry['split_by']}`",
            "",
            "| encoder | train fraction | groups | tiles | AUROC [95% CI] | accuracy [95% CI] "
            "| balanced acc. [95% CI] |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, r in entry["encoders"].items():
            for f in r["fractions"]:
                cells = [_ci(f[m]) for m in ("auroc", "accuracy", "balanced_accuracy")]
                lines.append(
                    f"| {key} | {f['fraction']:g} | {f['n_train_groups']} | "
                    f"{f['n_train']} | " + " | ".join(cells) + " |"
                )
        lines += [
            "",
            "| encoder | n train / test | Acc@1 | Acc@3 | Acc@5 | mMV@5 |",
            "|---|---|---|---|---|---|",
        ]
        for key, r in entry["encoders"].items():
            ret = r["retrieval"]
            lines.append(
                f"| {key} | {r['n_train']} / {r['n_test']} | "
                + " | ".join(f"{ret[m]:.3f}" for m in ("acc@1", "acc@3", "acc@5", "mmv@5"))
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def _ci(m: dict[str, Any]) -> str:
    if m["value"] is None:
        return "n/a"
    if m["ci_low"] is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["datasets"]), figsize=(15, 4.2), sharey=True)
    for ax, (_ds, entry) in zip(axes, results["datasets"].items(), strict=True):
        for key, r in entry["encoders"].items():
            xs = [f["fraction"] * 100 for f in r["fractions"]]
            ys = [f["auroc"]["value"] for f in r["fractions"]]
            lo = [f["auroc"]["value"] - f["auroc"]["ci_low"] for f in r["fractions"]]
            hi = [f["auroc"]["ci_high"] - f["auroc"]["value"] for f in r["fractions"]]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4, label=key)
        ax.set_xscale("log", base=2)
        ax.set_xticks([12.5, 25, 50, 100], ["12.5", "25", "50", "100"])
        ax.set_title(entry["title"], fontsize=10)
        ax.set_xlabel("% of training groups")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test AUROC (95% bootstrap CI)")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=Path("/tmp/lamina-worked-example"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = run(args.home, args.seed)
    out = REPO / "bench" / "results" / "worked_example.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, REPO / "docs" / "img" / "worked_example_auroc.png")
    print(table(results))


if __name__ == "__main__":
    main()
