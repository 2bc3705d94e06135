"""Finding the files to index and telling photos from whole-slide images."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif"})
AMBIGUOUS_SUFFIXES = frozenset({".tif", ".tiff"})  # a pyramidal TIFF is a slide, else a photo
SLIDE_SUFFIXES = frozenset(
    {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm"}
)


@dataclass(frozen=True)
class SourceFile:
    path: Path
    kind: str  # "photo" | "slide"


def classify(path: Path) -> str | None:
    """'photo', 'slide' or None (not something Lamina indexes)."""
    suffix = path.suffix.lower()
    if suffix in PHOTO_SUFFIXES:
        return "photo"
    if suffix in SLIDE_SUFFIXES:
        return "slide"
    if suffix in AMBIGUOUS_SUFFIXES:
        try:
            import openslide

            vendor = openslide.OpenSlide.detect_format(str(path))
        except Exception:  # noqa: BLE001 - unreadable files are reported when opened
            vendor = None
        return "slide" if vendor else "photo"
    return None


def discover(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[list[SourceFile], list[tuple[str, str]]]:
    """Expand files and folders (recursively, hidden entries skipped, sorted).

    Returns (sources, problems) where problems are (path, reason) for explicit paths that do
    not exist or are not indexable. Files of unknown type inside folders are ignored.
    DICOM WSI series (several .dcm files of one slide in a folder) become one source: the
    first file of the folder in sorted order stands for the series.
    """
    found: list[SourceFile] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()
    dicom_dirs: set[Path] = set()

    def add(p: Path, explicit: bool) -> None:
        rp = p.resolve()
        if rp in seen:
            return
        kind = classify(p)
        if kind is None:
            if explicit:
                problems.append((str(p), f"unsupported file type {p.suffix or '(none)'}"))
            return
        if p.suffix.lower() == ".dcm":
            if rp.parent in dicom_dirs:
                return
            dicom_dirs.add(rp.parent)
        seen.add(rp)
        found.append(SourceFile(path=p, kind=kind))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        add(Path(root) / name, explicit=False)
        elif p.is_file():
            add(p, explicit=True)
        else:
            problems.append((str(p), "no such file or directory"))
    return found, problems


def content_id(data: bytes | None = None, path: Path | None = None) -> str:
    """sha256 of the file's bytes: the source id (re-runs and duplicates are recognised by it)."""
    h = hashlib.sha256()
    if data is not None:
        h.update(data)
    elif path is not None:
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()
