"""The ingest pipeline: discover -> open -> (tiles) -> read -> embed -> segment -> commit.

Sources are prepared (hashed, opened, planned) by a pool of worker threads ahead of the
encoder, through a bounded window; the encoder runs in large batches that may span sources.
A source is committed as a whole: its tiles all become visible in one segment, or none do.
One bad file never stops the run: it is recorded with its reason and the run goes on.

Commits: the open segment is committed after ``commit_tiles`` tiles, ``commit_seconds`` wall
seconds or ``commit_sources`` sources (whichever comes first) and at the end; a commit also
carries over the rows of moved sources and drops those of replaced ones (``ledger``). The parts
live beside this module: options and source outcomes in ``ingest_types``, the run record in
``run_report``, committed-source bookkeeping in ``ledger``, photo rows in ``photo_source``,
encoder batches and CPU threads in ``encoding``.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from lamina.encoders import Encoder
from lamina.indexer.encoding import cpu_share, encoder_batches
from lamina.indexer.errors import IndexerError, UnreadableSourceError
from lamina.indexer.ingest_types import Embedded, IngestOptions, Moved, PreparedSource, Skipped
from lamina.indexer.ledger import SourceLedger
from lamina.indexer.manifest import Manifest
from lamina.indexer.photo_source import prepare_photo
from lamina.indexer.photos import read_photo
from lamina.indexer.progress import TileProgress, slide_row
from lamina.indexer.run_report import RunReport, utc_now
from lamina.indexer.sources import SourceFile, content_id, discover
from lamina.search.compaction import carry_over, maybe_compact
from lamina.search.errors import io_failure
from lamina.search.segments import SegmentWriter, file_stat, retire
from lamina.search.store import Collection, Store


class Ingest(SourceLedger):
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
        self.encoder = encoder
        self.options = options or IngestOptions()
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        report = RunReport(
            run_id=self.run_id, collection=collection.name, encoder=encoder.fingerprint
        )
        super().__init__(collection, manifest, report)
        self._hasher: ThreadPoolExecutor | None = None
        self._done = (0, 0)  # (sources, tiles) committed by this run
        self._started: dict[str, float] = {}  # file -> when its preparation began

    # -- preparation (worker threads) ---------------------------------------------------------
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
        self.report.started_at = utc_now()
        self.report.cleaned_up = self.collection.cleanup()
        files, problems = discover(paths)
        for path, reason in problems:
            self.report.failed.append({"file": path, "reason": reason})
        self._load_committed(files)
        self._started = {}
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
            self.report.finished_at = utc_now()
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
            cpu_share(self.encoder, self.options.workers),
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
        self._record_new(sid, path)
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
