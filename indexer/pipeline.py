"""The ingest pipeline: discover -> open -> (tiles) -> read -> embed -> segment -> commit.

Sources are prepared (hashed, opened, planned) by a pool of worker threads ahead of the
encoder, through a bounded window; the encoder runs in large batches that may span sources.
A source is committed as a whole: its tiles all become visible in one segment, or none do.
One bad file never stops the run: it is recorded with its reason and the run goes on.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lamina.encoders import Encoder
from lamina.encoders.base import resize_rgb
from lamina.indexer.errors import IndexerError, UnreadableSourceError
from lamina.indexer.manifest import Manifest
from lamina.indexer.photos import read_photo
from lamina.indexer.progress import TileProgress, slide_row
from lamina.indexer.sources import SourceFile, content_id, discover
from lamina.search.compaction import carry_over, maybe_compact
from lamina.search.errors import StoreIOError, io_failure
from lamina.search.roots import Roots
from lamina.search.segments import SegmentWriter, file_stat, retire
from lamina.search.store import Collection, Store
from lamina.search.verify import recorded_metadata

COMMIT_SOURCES_ENV = "LAMINA_COMMIT_EVERY_SOURCES"


def _env_int(name: str) -> int:
    try:
        return max(0, int(os.environ.get(name, "0") or 0))
    except ValueError:
        return 0


@dataclass
class IngestOptions:
    tile_px: int = 224
    mpp: float = 0.5
    mpp_override: float | None = None
    min_tissue: float = 0.5
    batch_size: int = 64
    workers: int = max(1, min(8, (os.cpu_count() or 2)))
    commit_tiles: int = 50_000
    commit_seconds: float = 30.0
    commit_sources: int = field(default_factory=lambda: _env_int(COMMIT_SOURCES_ENV))
    """Also commit after this many sources (0: no such limit). Default from the environment
    variable LAMINA_COMMIT_EVERY_SOURCES; 1 makes every slide its own segment (resume tests)."""
    progress: bool = True
    photo_tiles: bool = False
    """Photos get tile vectors too (``tile_px`` tiles at the photo's own pixels) besides the
    whole-photo vector; the CLI sets it when --tile-px is given explicitly."""


@dataclass
class PreparedSource:
    """A source ready for encoding: its row, its tile rows, and a lazy stream of tile images."""

    file: SourceFile
    source: dict[str, Any]
    tiles: list[dict[str, Any]]
    images: Iterator[np.ndarray]
    close: Callable[[], None] = lambda: None
    note: str | None = None
    """Why a source has no tiles (e.g. a slide without tissue); reported, not a failure."""
    pending_id: Future[str] | None = None
    """The content hash still being computed; it becomes ``source["source_id"]`` at commit."""


@dataclass
class Embedded:
    """A source already embedded elsewhere (a cluster task): its rows and (n, dim) vectors.
    ``source`` carries the file's ``file_size``/``file_mtime_ns`` as seen where it was read."""

    file: SourceFile
    source: dict[str, Any]
    tiles: list[dict[str, Any]]
    vectors: np.ndarray
    note: str | None = None


@dataclass
class Skipped:
    """A file already committed (same content at the same path)."""

    file: SourceFile
    source_id: str


@dataclass
class Moved:
    """A photo whose bytes are already committed (or added by this run) at another path: a
    duplicate, or a moved source whose stored rows are carried over to the new path (no
    embedding); :meth:`Ingest._move` tells which, in file order."""

    file: SourceFile
    source_id: str


@dataclass
class RunReport:
    run_id: str
    collection: str
    encoder: str
    indexed: int = 0
    tiles: int = 0
    unchanged: int = 0
    duplicates: list[dict[str, str]] = field(default_factory=list)
    """Files with the same bytes as another file of the run (or one committed and indexed
    again by this run): not indexed a second time."""
    moved: list[dict[str, str]] = field(default_factory=list)
    """Files with the bytes of a committed source whose recorded path this run does not
    index: the source's path is updated (``{"file": new, "from": old}``), nothing re-embedded."""
    replaced: list[dict[str, str]] = field(default_factory=list)
    """Files whose bytes changed since they were indexed: re-indexed, old rows removed."""
    empty: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    unmatched_manifest: list[str] = field(default_factory=list)
    slides: list[dict[str, Any]] = field(default_factory=list)
    """One row per slide committed: tiles, tissue share, mpp and its source, seconds (see
    indexer/progress.py ``slide_row``)."""
    updated: list[dict[str, Any]] = field(default_factory=list)
    """Unchanged files whose manifest row changed: their metadata was rewritten (no
    re-embedding), one entry per source with ``changes`` {column: {old, new}}."""
    segments: list[str] = field(default_factory=list)
    cleaned_up: list[str] = field(default_factory=list)
    snapshot: str = ""
    seconds: float = 0.0
    started_at: str = ""
    finished_at: str = ""
    interrupted: bool = False
    error: str = ""
    """Why the run stopped early (e.g. the disk is full); ``indexed``/``tiles`` then count only
    what was committed, and the next run indexes the rest."""
    cluster: dict[str, Any] | None = None
    """For a run on a Ray cluster: its nodes, CPUs, GPUs and encoders (None: a local run)."""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted and not self.error

    def stopped_by(self, exc: OSError, what: str, committed: tuple[int, int]) -> StoreIOError:
        """Record that the run stopped on ``exc`` after committing ``committed`` (sources,
        tiles); the error to raise says what failed and what was committed."""
        self.indexed, self.tiles = committed
        failure = io_failure(what, exc)
        self.error = str(failure)
        failure.details = {
            "run_id": self.run_id,
            "committed": {"sources": self.indexed, "tiles": self.tiles, "segments": self.segments},
        }
        failure.args = (
            f"{failure}. Committed before the failure: {self.indexed} sources "
            f"({self.tiles} vectors) in {len(self.segments)} segments; the next run adds the rest",
        )
        return failure

    def save(self, collection: Collection, **extra: Any) -> None:
        """Write the run record; a record that cannot be written (full disk) is said on stderr."""
        try:
            collection.write_run({**self.to_dict(), **extra})
        except OSError as exc:
            print(
                f"lamina: run record {self.run_id} not written: {exc.strerror or exc}",
                file=sys.stderr,
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def photo_tiles(rgb: np.ndarray, tile_px: int) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Non-overlapping ``tile_px`` tiles of a photo at its own pixels (partial edges dropped)."""
    h, w = rgb.shape[:2]
    for y in range(0, h - tile_px + 1, tile_px):
        for x in range(0, w - tile_px + 1, tile_px):
            row = {
                "kind": "photo-tile",
                "x": x,
                "y": y,
                "level": 0,
                "size_px": tile_px,
                "tile_px": tile_px,
            }
            yield row, rgb[y : y + tile_px, x : x + tile_px]


def prepare_photo(
    file: SourceFile,
    rgb: np.ndarray,
    source_id: str,
    meta: dict[str, Any],
    options: IngestOptions,
    input_px: int,
) -> PreparedSource:
    """A decoded photo's source row, its whole-photo tile (and ``photo_tiles`` tiles) and images."""
    h, w = rgb.shape[:2]
    mpp = meta.get("mpp") if isinstance(meta.get("mpp"), int | float) else None
    source = {
        "source_id": source_id,
        "source": str(file.path.resolve()),
        "kind": "photo",
        "width": w,
        "height": h,
        "mpp": mpp,
        "properties": None,
        **meta,
    }
    tile = {
        "kind": "photo",
        "x": 0,
        "y": 0,
        "level": 0,
        "size_px": max(w, h),
        "tile_px": input_px,
        "mpp": mpp,
        "tissue_fraction": None,
        **meta,
    }
    tiles, images = [tile], [resize_rgb(rgb, input_px)]
    if options.photo_tiles:
        for row, crop in photo_tiles(rgb, options.tile_px):
            tiles.append({**row, "mpp": mpp, "tissue_fraction": None, **meta})
            images.append(resize_rgb(crop, input_px))
    return PreparedSource(file, source, tiles, iter(images))


def encoder_batches(images: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """A source's images stacked into encoder batches. The first batch is smaller so the encoder
    starts while the readers fill the next ones; the sizes depend only on the tile count, so
    every run (local or on a cluster) batches a source identically."""
    limit = max(1, batch_size // 4)
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(image)
        if len(batch) >= limit:
            yield np.stack(batch)
            batch, limit = [], batch_size
    if batch:
        yield np.stack(batch)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Ingest:
    """One ingest run into one collection."""

    _bar: TileProgress | None = None
    """The run's progress bar (tiles), set by :meth:`_progress_bar`."""

    def __init__(
        self,
        collection: Collection,
        encoder: Encoder,
        options: IngestOptions | None = None,
        manifest: Manifest | None = None,
    ) -> None:
        collection.check_fingerprint(encoder.fingerprint)
        self.collection = collection
        self.encoder = encoder
        self.options = options or IngestOptions()
        self.manifest = manifest
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        self.report = RunReport(
            run_id=self.run_id, collection=collection.name, encoder=encoder.fingerprint
        )
        self._known: dict[str, list[str]] = {}
        self._stored: dict[tuple[str, str], str] = {}
        self._run_ids: dict[str, str] = {}  # source ids added by this run -> their path
        self._run_files: set[str] = set()  # resolved paths of the files this run indexes
        self._moves: dict[tuple[str, str], dict[str, Any]] = {}
        self._recorded: dict[str, dict[str, Any]] = {}
        self._known_paths: set[str] = set()
        self._hasher: ThreadPoolExecutor | None = None
        self._done = (0, 0)  # (sources, tiles) committed by this run
        # manifest rows of files already committed, applied after the run's commits
        self._metadata_updates: dict[tuple[str, str], dict[str, Any]] = {}

    # -- preparation (worker threads) ---------------------------------------------------------
    def _metadata(self, file: SourceFile) -> dict[str, Any]:
        # a source of a damaged (quarantined) segment keeps the metadata it was indexed with
        recorded = self._recorded.get(str(file.path.resolve()))
        if self.manifest is None:
            return recorded or {}
        row = self.manifest.match(file.path)
        if row is None:
            if recorded is not None:
                return recorded
            self.report.unmatched_manifest.append(str(file.path))
            return {}
        return row

    def _note_metadata(self, skipped: Skipped) -> None:
        """Remember the manifest row of a file already committed (applied by
        :meth:`_update_metadata` once the run's new sources are committed)."""
        if self.manifest is None:
            return
        row = self.manifest.match(skipped.file.path)
        if row is None:
            return
        sid = skipped.source_id
        where = self._known.get(sid) or []
        here = str(skipped.file.path.resolve())
        found = here if here in where else (where[0] if len(where) == 1 else None)
        if found is not None:  # the key is the path the segments hold (see _located_sources)
            stored = getattr(self, "_stored", {}).get((sid, found), found)
            self._metadata_updates[(sid, stored)] = row

    def _update_metadata(self) -> None:
        """Rewrite the metadata of committed sources whose manifest row changed (see
        ``search.rewrite.annotate``: a new snapshot sharing the vectors; nothing re-embedded)."""
        updates = self._metadata_updates
        if not updates:
            return
        from lamina.search.rewrite import annotate

        self.report.updated = annotate(self.collection, updates, locked=True)["changed"]
        self._metadata_updates = {}

    def _prepare(self, file: SourceFile) -> PreparedSource | Skipped | Moved:
        if file.kind == "slide":
            from lamina.indexer.slides import prepare_slide

            self._check_tiling(file)

            if self._hasher is None or str(file.path.resolve()) in self._known_paths:
                sid = content_id(path=file.path)
                if self._committed(sid, file):
                    return Skipped(file, sid)
                return prepare_slide(file, sid, self._metadata(file), self.options, self.encoder)
            # A path never committed cannot be skipped, so its (multi-GB) hash need not gate
            # the work: it runs beside the tissue mask, the reads and the encoding.
            pending = self._hasher.submit(content_id, None, file.path)
            try:
                prepared = prepare_slide(file, "", self._metadata(file), self.options, self.encoder)
            except BaseException:
                pending.cancel()
                raise
            prepared.pending_id = pending
            return prepared
        data, rgb = read_photo(file.path)
        sid = content_id(data)
        if self._committed(sid, file):
            return Skipped(file, sid)
        if self._identity(sid, str(file.path.resolve()))[0] != "new":
            return Moved(file, sid)  # moved or a duplicate (decided again in order, in _move)
        meta = self._metadata(file)
        return prepare_photo(file, rgb, sid, meta, self.options, self.encoder.input_px)

    # -- main loop ---------------------------------------------------------------------------
    def run(self, paths: Sequence[str | os.PathLike[str]]) -> RunReport:
        """Index ``paths``; waits while another ingest writes to the same collection."""

        def waiting(holder: str) -> None:
            print(
                f"lamina: another ingest ({holder}) is writing to collection "
                f"{self.collection.name!r}; waiting for it to finish",
                file=sys.stderr,
                flush=True,
            )

        with self.collection.ingest_lock(on_wait=waiting):
            if not (self.collection.path / "collection.json").is_file():
                from lamina.search.errors import CollectionNotFoundError

                raise CollectionNotFoundError(  # dropped (lamina drop) while this run waited
                    f"collection {self.collection.name!r} was dropped while this run waited"
                )
            report = self._run(paths)
        try:
            maybe_compact(self.collection)  # merges small segments past LAMINA_COMPACT_SEGMENTS
        except OSError as exc:  # the run is committed; merging is left to a later run
            print(f"lamina: warning: compaction skipped: {io_failure('compaction', exc)}",
                  file=sys.stderr)  # fmt: skip
        return report

    def _run(self, paths: Sequence[str | os.PathLike[str]]) -> RunReport:
        t0 = time.perf_counter()
        self.report.started_at = _now()
        self.report.cleaned_up = self.collection.cleanup()
        files, problems = discover(paths)
        for path, reason in problems:
            self.report.failed.append({"file": path, "reason": reason})
        self._known = self._located_sources()
        roots = Roots.of(self.collection.path.parent.parent).table()
        recorded = recorded_metadata(self.collection)
        self._recorded = {roots.resolve(p): meta for p, meta in recorded.items()}
        self._known_paths = {p for paths in self._known.values() for p in paths}
        self._run_files = {str(f.path.resolve()) for f in files}
        self._run_ids, self._moves = {}, {}
        self._stale: set[tuple[str, str]] = set()
        self._started: dict[str, float] = {}  # file -> when its preparation began
        bar = self._progress_bar(files)
        writer: SegmentWriter | None = None
        last_commit = time.monotonic()
        self._done = (0, 0)
        outcomes = self._outcomes(files)
        try:
            for file, outcome in outcomes:
                if isinstance(outcome, BaseException):
                    self._fail(file, outcome)
                elif isinstance(outcome, Skipped):
                    self.report.unchanged += 1
                    self._note_metadata(outcome)
                elif isinstance(outcome, Moved):
                    if self._move(outcome.file, outcome.source_id):
                        writer = writer or self.collection.writer(self.run_id)
                elif isinstance(outcome, Embedded):
                    writer = writer or self.collection.writer(self.run_id)
                    self._add_embedded(outcome, writer)
                else:
                    writer = writer or self.collection.writer(self.run_id)
                    self._encode_source(outcome, writer)
                self._advance(bar, outcome)
                if writer is not None and (
                    writer.n_tiles >= self.options.commit_tiles
                    or time.monotonic() - last_commit >= self.options.commit_seconds
                    or 0 < self.options.commit_sources <= writer.n_sources
                ):
                    self._commit(writer)
                    writer, last_commit = None, time.monotonic()
            outcomes.close()  # the preparation pools shut down before the last commit
            if writer is not None:
                self._commit(writer)
                writer = None
            self._update_metadata()
        except KeyboardInterrupt:
            self.report.interrupted = True
            if writer is not None:
                writer.abort()
            raise
        except OSError as exc:  # the store cannot be written (full disk, I/O error)
            if writer is not None:
                writer.abort()  # frees its temporary directory first
            what = f"ingest into collection {self.collection.name!r}"
            raise self.report.stopped_by(exc, what, self._done) from exc
        finally:
            outcomes.close()
            if bar is not None:
                bar.close()
            self.report.seconds = round(time.perf_counter() - t0, 3)
            self.report.finished_at = _now()
            self.report.snapshot = self.collection.snapshot().id
            self.report.save(self.collection)
        return self.report

    def _progress_bar(self, files: list[SourceFile]) -> Any:
        """The run's one progress bar: tiles, its total growing as sources are opened."""
        name = f"indexing {self.collection.name}"
        self._bar = TileProgress(len(files), self.options.progress, name)
        return self._bar

    def _advance(self, bar: Any, outcome: Any) -> None:
        if bar is not None:
            bar.source_done(len(self.report.failed))

    def _prepare_counted(self, file: SourceFile) -> Any:
        """:meth:`_prepare`, timed from here, its tiles added to the bar's total."""
        self._started[str(file.path)] = time.perf_counter()
        out = self._prepare(file)
        if isinstance(out, PreparedSource) and self._bar is not None:
            self._bar.planned(len(out.tiles))
        return out

    def _outcomes(self, files: list[SourceFile]) -> Generator[tuple[SourceFile, Any], None, None]:
        """(file, PreparedSource | Embedded | Skipped | exception) for every file, in the
        order they are ready: here, prepared by reader threads and embedded by the caller."""
        with (
            ThreadPoolExecutor(
                max_workers=self.options.workers, thread_name_prefix="lamina-read"
            ) as pool,
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="lamina-hash") as hasher,
            _cpu_share(self.encoder, self.options.workers),
        ):
            self._hasher = hasher
            yield from self._prepared(pool, files)

    def _prepared(
        self, pool: ThreadPoolExecutor, files: list[SourceFile]
    ) -> Iterator[tuple[SourceFile, Any]]:
        """Yield (file, PreparedSource | Skipped | exception) in order, preparing ahead."""
        window: deque[tuple[SourceFile, Future[Any]]] = deque()
        ahead = max(2, self.options.workers * 4)
        it = iter(files)
        for f in it:
            window.append((f, pool.submit(self._prepare_counted, f)))
            if len(window) >= ahead:
                break
        while window:
            f, fut = window.popleft()
            try:
                yield f, fut.result()
            except Exception as exc:  # noqa: BLE001 - every failure is reported per file
                yield f, exc
            nxt = next(it, None)
            if nxt is not None:
                window.append((nxt, pool.submit(self._prepare_counted, nxt)))

    def _encode_source(self, prepared: PreparedSource, writer: SegmentWriter) -> None:
        parts: list[np.ndarray] = []
        try:
            for batch in encoder_batches(prepared.images, self.options.batch_size):
                parts.append(self.encoder.embed(batch))
                if self._bar is not None:
                    self._bar.advance(len(batch))
        except Exception as exc:  # noqa: BLE001 - an unreadable region fails this source only
            self._fail(prepared.file, exc)
            if self._bar is not None:
                self._bar.drop(len(prepared.tiles) - sum(len(p) for p in parts))
            return
        finally:
            prepared.close()
        vectors = (
            np.concatenate(parts) if parts else np.zeros((0, self.encoder.embed_dim), np.float32)
        )
        if prepared.pending_id is not None:
            try:
                prepared.source["source_id"] = prepared.pending_id.result()
            except OSError as exc:
                self._fail(
                    prepared.file,
                    UnreadableSourceError(
                        f"{prepared.file.path}: cannot read file ({exc.strerror or exc})"
                    ),
                )
                return
        prepared.source.update(file_stat(prepared.file.path))
        embedded = Embedded(prepared.file, prepared.source, prepared.tiles, vectors, prepared.note)
        self._add_embedded(embedded, writer)

    def _add_embedded(self, done: Embedded, writer: SegmentWriter) -> None:
        """Add one embedded source to the segment being written, with the run's bookkeeping."""
        if len(done.vectors) != len(done.tiles):
            self._fail(
                done.file,
                IndexerError(
                    f"{done.file.path}: read {len(done.vectors)} tiles, planned {len(done.tiles)}"
                ),
            )
            return
        sid, path = done.source["source_id"], done.source["source"]
        how, other = self._identity(sid, path)
        if how == "duplicate":
            self.report.duplicates.append({"file": path, "same_as": other})
            return
        if how == "moved":  # a slide (hashed beside its reads): its stored rows move instead
            self._move(done.file, sid)
            return
        writer.add_source(done.source, done.tiles, done.vectors)
        for old in {s for s, paths in self._known.items() if path in paths and s != sid}:
            self._stale.add((old, self._stored.get((old, path), path)))  # its old rows go
            self.report.replaced.append({"file": path, "old_source_id": old})
        self._known.setdefault(sid, []).append(path)
        self._run_ids[sid] = path
        self.report.indexed += 1
        self.report.tiles += len(done.tiles)
        if done.source.get("kind") == "slide":
            t0 = self._started.pop(str(done.file.path), None)
            seconds = None if t0 is None else time.perf_counter() - t0
            self.report.slides.append(slide_row(done.source, len(done.tiles), seconds))
        if not done.tiles:
            self.report.empty.append(
                {"file": str(done.file.path), "reason": done.note or "no tiles"}
            )

    def _identity(self, sid: str, path: str) -> tuple[str, str]:
        """("new" | "duplicate" | "moved", the other path) for a file of content ``sid`` at
        ``path`` not committed there: a duplicate when this run already added those bytes or
        indexes their committed path too; moved when they are committed only at paths this
        run does not index (the source moved or was copied: its path is updated)."""
        if sid in self._run_ids:
            return "duplicate", self._run_ids[sid]
        known = [p for p in self._known.get(sid, ()) if p != path]
        if not known:
            return "new", ""
        for p in known:
            if p in self._run_files:
                return "duplicate", p
        return "moved", known[0]

    def _move(self, file: SourceFile, sid: str) -> bool:
        """Carry the committed rows of ``sid`` over to ``file``'s path at the next commit
        (True), or report ``file`` as a duplicate (False)."""
        new = str(file.path.resolve())
        how, old = self._identity(sid, new)
        if how != "moved":
            self.report.duplicates.append({"file": new, "same_as": old})
            return False
        self._moves[(sid, self._stored.get((sid, old), old))] = {
            "source": new,
            **file_stat(file.path),
        }
        self._known[sid] = [new if p == old else p for p in self._known.get(sid, [])]
        self._run_ids[sid] = new
        self.report.moved.append({"file": new, "from": old})
        return True

    def _commit(self, writer: SegmentWriter) -> None:
        replaced = (
            carry_over(self.collection, writer, self._stale, self._moves)
            if self._stale or self._moves
            else []
        )
        info = writer.commit()
        if replaced:  # the new segment hides them from its commit on
            retire(self.collection.segments_dir, replaced)
        self._stale, self._moves = set(), {}
        if info is not None:
            self.report.segments.append(info.segment_id)
            self._done = (self._done[0] + info.n_sources, self._done[1] + info.n_tiles)

    def _fail(self, file: SourceFile, exc: BaseException) -> None:
        reason = str(exc) if isinstance(exc, IndexerError) else f"{type(exc).__name__}: {exc}"
        prefix = str(file.path)
        if reason.startswith(prefix + ": "):
            reason = reason[len(prefix) + 2 :]
        self.report.failed.append({"file": prefix, "reason": reason})

    def _check_tiling(self, file: SourceFile) -> None:
        """Slide tiles of one collection share one scale: refuse another tile size or mpp."""
        info = self.collection.info
        want = (self.options.tile_px, float(self.options.mpp))
        tile_px, mpp = info.get("tile_px"), info.get("mpp")
        if tile_px is not None and mpp is not None and (int(tile_px), float(mpp)) != want:
            raise IndexerError(
                f"{file.path}: collection {self.collection.name!r} tiles slides at {tile_px} px, "
                f"{mpp:g} um/px; this run asks for {want[0]} px, {want[1]:g} um/px. "
                "Use the collection's --tile-px/--mpp or index into another collection."
            )

    def _located_sources(self) -> dict[str, list[str]]:
        """source id -> where its committed files are now (stored paths resolved through the
        home's roots, ``search.roots``); ``_stored`` maps (id, location) back to the path the
        segments hold (the key of the rows to carry over)."""
        roots = Roots.of(self.collection.path.parent.parent).table()
        self._stored = {}
        out: dict[str, list[str]] = {}
        for sid, paths in self.collection.committed_sources().items():
            for stored in paths:
                here = roots.resolve(stored)
                self._stored[(sid, here)] = stored
                out.setdefault(sid, []).append(here)
        return out

    def _committed(self, source_id: str, file: SourceFile) -> bool:
        return str(file.path.resolve()) in self._known.get(source_id, ())


@contextmanager
def _cpu_share(encoder: Encoder, readers: int) -> Iterator[None]:
    """Leave the reader threads their cores: on a machine of 4+ cores, a torch encoder on the
    CPU gets max(cores - readers, cores // 2) intra-op threads for the run. Oversubscribed
    OpenMP threads stall at every barrier; measured on 16 cores with 8 readers, slide ingest
    went from 942 to 1529 tiles/s (test/tiny-vit) and 553 to 600 (test/tiny-resnet). On 2
    cores the cap (1 thread) was slower, so small machines are left alone."""
    torch = sys.modules.get("torch")
    if (
        torch is None
        or not str(getattr(encoder, "device", "cpu")).startswith("cpu")
        or not hasattr(encoder, "model")
    ):
        yield
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    before = torch.get_num_threads()
    want = before if cores < 4 else max(1, min(before, max(cores - readers, cores // 2)))
    if want != before:
        torch.set_num_threads(want)
    try:
        yield
    finally:
        if want != before:
            torch.set_num_threads(before)


def open_collection_for(
    store: Store, name: str, encoder: Encoder, options: IngestOptions, weights: str | None = None
) -> Collection:
    """Open or create collection ``name`` bound to ``encoder`` (refusing a different one)."""
    extra = {"encoder_weights": encoder.weights_path or weights}
    return store.open_or_create(
        name,
        encoder=encoder.key,
        fingerprint=encoder.fingerprint,
        embed_dim=encoder.embed_dim,
        tile_px=options.tile_px,
        mpp=options.mpp,
        extra=extra,
    )


def ingest(
    store: Store,
    collection: str,
    paths: Sequence[str | os.PathLike[str]],
    encoder: Encoder,
    options: IngestOptions | None = None,
    manifest: Manifest | None = None,
) -> RunReport:
    """Index ``paths`` into ``collection`` (created on first use) and return the run report."""
    options = options or IngestOptions()
    col = open_collection_for(store, collection, encoder, options)
    return Ingest(col, encoder, options, manifest).run(paths)
