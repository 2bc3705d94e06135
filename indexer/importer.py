"""``lamina import``: embeddings computed elsewhere -> committed segments of a collection.

The collection is bound to a *declared* encoder. A name registered here (``path/foundation``,
``path/uni``...) binds it to that encoder's real fingerprint (weights found as for ``lamina
index``), so image and region queries work. Any other name must be ``external/<name>`` with
``dim``: its fingerprint is a hash of (name, dim), no local encoder has it, and image queries
are refused with a message saying so; vector, stored-tile, cohort, export and probe work.

Every file is read and checked whole before anything from it is written: the vector width must
be the declared dimension, values finite, no vector all zeros, no two vectors of one source at
the same (x, y), no id twice; the first offending row is named with its file. A bad file is
reported and skipped; the others are imported (exit 1, as ``lamina index``). Vectors are stored
L2-normalised (float32), as every collection is searched by inner product on unit vectors;
vectors already of unit length (within 1e-6) are stored bit for bit as given.

Idempotent and crash-safe as ``lamina index``: a source's id is a hash of (file content, source
name); sources already committed from the same place are skipped; sources are committed whole,
in segments of at most ``commit_tiles`` vectors, under the collection's ingest lock, and the run
is recorded in ``runs/``. A killed import leaves only temporary segment folders, removed by the
next run, which then imports what is missing.

Sources are joined to files when they can be found: a TRIDENT/CLAM slide name to a slide under
``slides`` (same name without extension), so tile images and region reads work (tiles are
level-0 regions ``size_l0`` wide, shown at ``patch_px``); a table's source that is a path to an
existing photo or slide. The manifest (``--manifest``) joins metadata by file or source name.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lamina.encoders import EncoderError, UnknownEncoderError, create_encoder, get_config
from lamina.indexer.errors import (
    DeclaredEncoderError,
    ImportFormatError,
    ImportValidationError,
    IndexerError,
)
from lamina.indexer.import_readers import SUFFIXES, ImportedSource, read_file
from lamina.indexer.manifest import Manifest
from lamina.indexer.run_report import RunReport, utc_now
from lamina.indexer.sources import PHOTO_SUFFIXES, SLIDE_SUFFIXES
from lamina.search.segments import RESERVED_COLUMNS, SegmentWriter
from lamina.search.store import Collection, Store

EXTERNAL_PREFIX = "external/"
UNIT_TOLERANCE = 1e-6
"""A vector whose L2 norm is within this of 1 is stored as given (not divided again)."""


@dataclass(frozen=True)
class DeclaredEncoder:
    """What a collection of imported vectors is bound to."""

    name: str
    dim: int
    fingerprint: str
    external: bool
    weights_path: str | None = None
    input_px: int | None = None
    mpp: float | None = None


def external_fingerprint(name: str, dim: int) -> str:
    blob = json.dumps({"declared": name, "dim": int(dim)}, sort_keys=True).encode()
    return f"{name}@{hashlib.sha256(blob).hexdigest()[:16]}"


def declare_encoder(
    name: str, dim: int | None = None, weights: str | None = None
) -> DeclaredEncoder:
    """Resolve ``--encoder-name`` (+ ``--dim``, ``--weights``) to a fingerprint."""
    if name.startswith(EXTERNAL_PREFIX):
        if len(name) <= len(EXTERNAL_PREFIX) or any(c.isspace() for c in name):
            raise DeclaredEncoderError(f"--encoder-name {name!r}: give external/<name>")
        if not dim or dim < 1:
            raise DeclaredEncoderError(
                f"--encoder-name {name} is not an encoder of this machine: give its --dim"
            )
        return DeclaredEncoder(name, int(dim), external_fingerprint(name, dim), external=True)
    try:
        config = get_config(name)
    except UnknownEncoderError:
        raise DeclaredEncoderError(
            f"--encoder-name {name!r} is not registered here; vectors from another encoder are "
            f"declared as external/<name> with --dim (e.g. external/trident-uni2 --dim 1536)"
        ) from None
    if dim and dim != config.embed_dim:
        raise DeclaredEncoderError(f"{name} makes {config.embed_dim}-d vectors, not --dim {dim}")
    try:
        enc = create_encoder(name, weights=weights, device="cpu")
    except EncoderError as exc:
        raise DeclaredEncoderError(
            f"vectors declared as {name} are bound to its fingerprint, which needs its weights "
            f"here: {exc} (or declare them as external/<name> with --dim)"
        ) from None
    return DeclaredEncoder(
        name, config.embed_dim, enc.fingerprint, external=False,
        weights_path=enc.weights_path, input_px=config.input_px, mpp=config.mpp,
    )  # fmt: skip


@dataclass
class ImportOptions:
    slides: list[Path] = field(default_factory=list)
    """Folders (searched recursively) or files where the slides named by .h5 files may be."""
    manifest: Manifest | None = None
    source_column: str = "source"
    vector_column: str | None = None
    patch_px_level0: int | None = None
    """Patch side in level-0 pixels for files that do not record it (CLAM feature files)."""
    commit_tiles: int = 200_000
    progress: bool = True


def open_import_collection(store: Store, name: str, declared: DeclaredEncoder) -> Collection:
    """Open or create ``name`` bound to ``declared`` (refusing another encoder)."""
    return store.open_or_create(
        name,
        encoder=declared.name,
        fingerprint=declared.fingerprint,
        embed_dim=declared.dim,
        tile_px=declared.input_px,
        mpp=declared.mpp,
        extra={"encoder_weights": declared.weights_path, "external": declared.external},
    )


def check_vectors(src: ImportedSource, dim: int) -> np.ndarray:
    """The source's vectors, L2-normalised float32, or an error naming file and row."""
    v = src.vectors
    where = f"{src.file}: source {src.name!r}"
    if v.ndim != 2 or v.shape[1] != dim:
        width = v.shape[1] if v.ndim == 2 else v.shape
        raise ImportValidationError(
            f"{src.file}: row {int(src.rows[0]) if len(src.rows) else 0}: vector has {width} "
            f"dimensions; the collection's encoder makes {dim}"
        )
    if not np.issubdtype(v.dtype, np.number):
        raise ImportValidationError(f"{where}: vectors are {v.dtype}, not numbers")
    v = v.astype(np.float32, copy=False)
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        raise ImportValidationError(
            f"{src.file}: row {int(src.rows[np.argmax(bad)])}: vector holds NaN or infinity"
        )
    norms = np.linalg.norm(v, axis=1)
    if (norms == 0).any():
        raise ImportValidationError(
            f"{src.file}: row {int(src.rows[np.argmax(norms == 0)])}: vector is all zeros"
        )
    if src.xy is not None and len(src.xy) > 1:
        _first_duplicate(src, src.xy[:, 0] * (1 << 32) + src.xy[:, 1], "(x, y)")
    if src.ids is not None:
        _first_duplicate(src, np.asarray(src.ids), "id")
    # unit vectors (to float32 rounding) are kept bit for bit: a Lamina export imported
    # again holds identical vectors
    scale = np.where(np.abs(norms - 1.0) <= UNIT_TOLERANCE, 1.0, norms).astype(np.float32)
    return (v / scale[:, None]).astype(np.float32, copy=False)


def _first_duplicate(src: ImportedSource, keys: np.ndarray, what: str) -> None:
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if (counts > 1).any():
        k = keys[first[np.argmax(counts > 1)]]
        rows = [int(r) for r in src.rows[np.flatnonzero(keys == k)][:2]]
        raise ImportValidationError(
            f"{src.file}: rows {rows[0]} and {rows[1]}: duplicate {what} in source {src.name!r}"
        )


class SlideFinder:
    """Slides and photos under the given folders, by file name with and without extension."""

    def __init__(self, places: Iterable[Path]) -> None:
        self.by_name: dict[str, Path] = {}
        for place in places:
            files = [place] if place.is_file() else sorted(place.rglob("*"))
            for f in files:
                if f.suffix.lower() in SLIDE_SUFFIXES | PHOTO_SUFFIXES and f.is_file():
                    self.by_name.setdefault(f.stem, f.resolve())
                    self.by_name.setdefault(f.name, f.resolve())

    def find(self, name: str) -> Path | None:
        p = Path(name)
        if p.suffix.lower() in SLIDE_SUFFIXES | PHOTO_SUFFIXES and p.is_file():
            return p.resolve()
        return self.by_name.get(name) or self.by_name.get(p.name)


def _clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {(f"meta_{k}" if k in RESERVED_COLUMNS else k): v for k, v in meta.items()}


def build_rows(
    src: ImportedSource,
    sid: str,
    located: Path | None,
    options: ImportOptions,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The source row and tile rows of one imported source (joined to its file if found)."""
    meta: dict[str, Any] = {}
    if options.manifest is not None:
        row = options.manifest.match(located or Path(src.name))
        meta = _clean_meta(row or {})
    n = len(src.vectors)
    kind, width, height, mpp0 = "external", None, None, None
    size_l0 = src.size_l0
    if located is not None and located.suffix.lower() in SLIDE_SUFFIXES:
        from lamina.indexer.slides import Slide

        with Slide(located, require_mpp=False) as slide:
            kind, width, height, mpp0 = "slide", slide.width, slide.height, slide.mpp
            if size_l0 is None and src.patch_level is not None and src.patch_px:
                ds = float(slide.level_downsamples[int(src.patch_level)])
                size_l0 = np.full(n, round(src.patch_px * ds), np.int64)
    elif located is not None:
        from PIL import Image

        with Image.open(located) as im:
            kind, (width, height) = "photo", im.size
    if size_l0 is None and options.patch_px_level0:
        size_l0 = np.full(n, int(options.patch_px_level0), np.int64)
    source = {
        "source_id": sid,
        "source": str(located) if located is not None else src.name,
        "kind": kind,
        "width": width,
        "height": height,
        "mpp": mpp0,
        "properties": {**src.properties, "imported_from": str(src.file.resolve()),
                       "imported_name": src.name},
        **meta,
    }  # fmt: skip
    patch_px = src.patch_px
    tile_mpp = src.target_mpp
    tiles: list[dict[str, Any]] = []
    xy = src.xy
    for i in range(n):
        if xy is not None:
            side = int(size_l0[i]) if size_l0 is not None else 0
            if mpp0 and side and patch_px:
                tile_mpp = mpp0 * side / patch_px
            tile = {"kind": "tile", "x": int(xy[i, 0]), "y": int(xy[i, 1]), "level": 0,
                    "size_px": side, "tile_px": patch_px or (side or None), "mpp": tile_mpp}  # fmt: skip
        elif kind == "photo":
            tile = {"kind": "photo", "x": 0, "y": 0, "level": 0,
                    "size_px": max(width or 0, height or 0), "tile_px": None, "mpp": None}  # fmt: skip
        else:
            tile = {"kind": "external", "x": 0, "y": 0, "level": 0, "size_px": 0,
                    "tile_px": None, "mpp": None}  # fmt: skip
        tile["tissue_fraction"] = None
        tiles.append({**meta, **tile})
    for col, values in src.tile_meta.items():
        name = f"meta_{col}" if col in RESERVED_COLUMNS else col
        for t, v in zip(tiles, values, strict=True):
            t[name] = v.item() if isinstance(v, np.generic) else v
    return source, tiles


class Import:
    """One import run into one collection."""

    def __init__(
        self,
        collection: Collection,
        declared: DeclaredEncoder,
        options: ImportOptions | None = None,
    ) -> None:
        collection.check_fingerprint(declared.fingerprint)
        self.collection = collection
        self.declared = declared
        self.options = options or ImportOptions()
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        self.report = RunReport(
            run_id=self.run_id, collection=collection.name, encoder=declared.fingerprint
        )
        self._done = (0, 0)  # (sources, tiles) committed by this run

    def run(self, paths: Sequence[str | os.PathLike[str]]) -> RunReport:
        def waiting(holder: str) -> None:
            print(
                f"lamina: another ingest ({holder}) is writing to collection "
                f"{self.collection.name!r}; waiting for it to finish",
                file=sys.stderr,
                flush=True,
            )

        with self.collection.ingest_lock(on_wait=waiting):
            return self._run(paths)

    def _files(self, paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
        out: list[Path] = []
        for p in map(Path, paths):
            if p.is_dir():
                out.extend(f for f in sorted(p.rglob("*")) if f.suffix.lower() in SUFFIXES)
            elif p.is_file():
                out.append(p)
            else:
                self.report.failed.append({"file": str(p), "reason": "no such file or folder"})
        return out

    def _run(self, paths: Sequence[str | os.PathLike[str]]) -> RunReport:
        t0 = time.perf_counter()
        self.report.started_at = utc_now()
        self.report.cleaned_up = self.collection.cleanup()
        files = self._files(paths)
        known = self.collection.committed_sources()
        finder = SlideFinder(self.options.slides)
        writer: SegmentWriter | None = None
        seen: dict[str, str] = {}
        ids = _IdBlocks(self.collection)
        try:
            for file in _progress(files, self.options.progress, self.collection.name):
                try:
                    batch = self._read(file, seen, finder)
                except (IndexerError, OSError, ValueError) as exc:
                    self.report.failed.append({"file": str(file), "reason": _reason(file, exc)})
                    continue
                todo = []
                for src, sid, located, vectors in batch:
                    where = str(located) if located is not None else src.name
                    if where in known.get(sid, ()):
                        self.report.unchanged += 1
                    else:
                        todo.append((src, sid, located, vectors, where))
                ids.reserve(sum(len(t[3]) for t in todo))
                for src, sid, located, vectors, where in todo:
                    source, tiles = build_rows(src, sid, located, self.options)
                    writer = writer or self._writer(ids)
                    writer.add_source(source, tiles, vectors)
                    known.setdefault(sid, []).append(where)
                    self.report.indexed += 1
                    self.report.tiles += len(tiles)
                    if writer.n_tiles >= self.options.commit_tiles:
                        self._commit(writer)
                        writer = None
            if writer is not None:
                self._commit(writer)
                writer = None
        except KeyboardInterrupt:
            self.report.interrupted = True
            if writer is not None:
                writer.abort()
            raise
        except OSError as exc:  # the store cannot be written (full disk, I/O error)
            if writer is not None:
                writer.abort()
            what = f"import into collection {self.collection.name!r}"
            raise self.report.stopped_by(exc, what, self._done) from exc
        finally:
            self.report.seconds = round(time.perf_counter() - t0, 3)
            self.report.finished_at = utc_now()
            self.report.snapshot = self.collection.snapshot().id
            self.report.save(self.collection, kind="import")
        return self.report

    def _read(
        self, file: Path, seen: dict[str, str], finder: SlideFinder
    ) -> list[tuple[ImportedSource, str, Path | None, np.ndarray]]:
        """All sources of ``file``, checked; nothing is written unless every one passes."""
        checked = [
            (src, check_vectors(src, self.declared.dim))
            for src in read_file(file, self.options.source_column, self.options.vector_column)
        ]
        out = []
        for src, vectors in checked:
            located = finder.find(src.name)
            key = str(located) if located is not None else src.name
            if key in seen and seen[key] != str(file):
                raise ImportValidationError(
                    f"{file}: source {src.name!r} was already imported from {seen[key]} in this run"
                )
            out.append((src, src.identity, located, vectors))
        for src, _, located, _ in out:
            seen[str(located) if located is not None else src.name] = str(file)
        return out

    def _writer(self, ids: _IdBlocks) -> SegmentWriter:
        col = self.collection
        dtype = str(getattr(col, "vector_dtype", "float32"))
        return SegmentWriter(
            col.segments_dir, col.dim, col.fingerprint, self.run_id, ids.take, dtype=dtype
        )

    def _commit(self, writer: SegmentWriter) -> None:
        info = writer.commit()
        if info is not None:
            self.report.segments.append(info.segment_id)
            self._done = (self._done[0] + info.n_sources, self._done[1] + info.n_tiles)


class _IdBlocks:
    """Tile ids reserved from the collection a file at a time (one locked counter update per
    file instead of per source; ids a crash leaves unused are gaps, which are fine)."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.block: range = range(0)

    def reserve(self, n: int) -> None:
        if n > len(self.block):
            self.block = self.collection.allocate_tile_ids(n)

    def take(self, n: int) -> range:
        self.reserve(n)
        out, self.block = self.block[:n], self.block[n:]
        return out


def _reason(file: Path, exc: BaseException) -> str:
    reason = str(exc) if isinstance(exc, IndexerError) else f"{type(exc).__name__}: {exc}"
    prefix = str(file) + ": "
    return reason[len(prefix) :] if reason.startswith(prefix) else reason


def _progress(files: list[Path], enabled: bool, name: str) -> Iterable[Path]:
    if not enabled or len(files) < 2:
        return files
    from tqdm import tqdm

    return tqdm(files, unit="file", desc=f"importing into {name}", file=sys.stderr, leave=True)


def import_embeddings(
    store: Store,
    collection: str,
    paths: Sequence[str | os.PathLike[str]],
    declared: DeclaredEncoder,
    options: ImportOptions | None = None,
) -> RunReport:
    """Import ``paths`` into ``collection`` (created on first use) and return the run report."""
    col = open_import_collection(store, collection, declared)
    return Import(col, declared, options).run(paths)


__all__ = [
    "DeclaredEncoder",
    "DeclaredEncoderError",
    "Import",
    "ImportFormatError",
    "ImportOptions",
    "ImportValidationError",
    "declare_encoder",
    "external_fingerprint",
    "import_embeddings",
    "open_import_collection",
]
