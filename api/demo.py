"""`make demo`: index the bundled photo sample, run a few example queries, then serve the page.

Every step is a real `lamina` command, printed before it runs, so the demo doubles as a tour.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "demo" / "derm"


def lamina(home: Path, *args: str, check: bool = True) -> int:
    cmd = ["lamina", "--home", str(home), *args]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "lamina.api", "--home", str(home), *args], cwd=REPO
    )
    if check and proc.returncode not in (0,):
        raise SystemExit(f"demo step failed with exit code {proc.returncode}")
    return proc.returncode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, default=REPO / "demo-data")
    parser.add_argument("--no-serve", action="store_true", help="Stop after the example queries.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="8000")
    args = parser.parse_args(argv)
    images = SAMPLE / "images"
    photos = sorted(images.glob("*.jpg"))
    print(
        f"Lamina demo: {len(photos)} PAD-UFES-20 photos (CC BY 4.0, see "
        f"{(SAMPLE / 'ATTRIBUTION.md').relative_to(REPO)}) into {args.home}"
    )
    lamina(args.home, "encoders")
    lamina(
        args.home,
        "index",
        str(images),
        "--manifest",
        str(SAMPLE / "labels.csv"),
        "--source-column",
        "filename",
        "--collection",
        "derm",
        "--encoder",
        "classic/stain-texture",
    )
    lamina(args.home, "status")
    mel = next(p for p in photos if _diagnostic(p) == "MEL")
    print(f"\nQuery photo: {mel.name} (diagnostic MEL)")
    lamina(args.home, "search", "--collection", "derm", "--image", str(mel), "-k", "5")
    lamina(
        args.home,
        "search",
        "--collection",
        "derm",
        "--image",
        str(mel),
        "-k",
        "5",
        "--filter",
        "diagnostic=MEL,BCC",
        "--filter",
        "age>=60",
    )
    lamina(
        args.home,
        "search",
        "--collection",
        "derm",
        "--tile-id",
        "0",
        "-k",
        "3",
        "--group-by",
        "patient",
        "--exclude-same",
        "patient_id",
    )
    if args.no_serve:
        return
    print(f"\nServing the search page on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            "lamina.api",
            "--home",
            str(args.home),
            "serve",
            "--host",
            args.host,
            "--port",
            args.port,
        ],
    )


def _diagnostic(photo: Path) -> str | None:
    import csv

    with open(SAMPLE / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if Path(row["filename"]).name == photo.name:
                return row["diagnostic"]
    return None


if __name__ == "__main__":
    main()
