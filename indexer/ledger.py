"""What an ingest run knows about the collection's committed sources, and what it changes.

Method. At the start of a run (:meth:`SourceLedger._load_committed`) the committed sources are
listed as source id -> the paths they are at now (stored paths resolved through the home's
roots, ``search.roots``), with the metadata each was indexed with. Every file of the run is
then, by its content id (sha256 of its bytes) and resolved path:

- *unchanged* (``Skipped``): those bytes are committed at this path; a changed manifest row is
  noted and applied after the run's commits (:meth:`_update_metadata`: ``search.rewrite``, a
  new snapshot sharing the vectors, nothing re-embedded);
- *new*: added to the run's segment (:meth:`_record_new`); other bytes committed at the same
  path are *replaced* (their rows go at the next commit);
- a *duplicate*: this run already added those bytes, or indexes their committed path too;
- *moved*: those bytes are committed only at paths this run does not index; the stored rows
  are carried over to the new path at the next commit (no embedding).

Invariants: the decision is made in file order on the driver thread, so which of two equal
files is the duplicate never depends on thread timing; ``_stale`` and ``_moves`` are keyed by
(source id, the path the segments hold), the key of the rows to carry over, never by the
resolved location; ``_stale``/``_moves`` empty after each commit (the caller clears them).
"""

from __future__ import annotations

from typing import Any

from lamina.indexer.ingest_types import Skipped
from lamina.indexer.manifest import Manifest
from lamina.indexer.run_report import RunReport
from lamina.indexer.sources import SourceFile
from lamina.search.roots import Roots
from lamina.search.segments import file_stat
from lamina.search.store import Collection
from lamina.search.verify import recorded_metadata


class SourceLedger:
    """The run's view of committed sources and the changes it makes to them (module doc)."""

    def __init__(
        self, collection: Collection, manifest: Manifest | None, report: RunReport
    ) -> None:
        self.collection = collection
        self.manifest = manifest
        self.report = report
        self._known: dict[str, list[str]] = {}
        self._stored: dict[tuple[str, str], str] = {}
        self._run_ids: dict[str, str] = {}  # source ids added by this run -> their path
        self._run_files: set[str] = set()  # resolved paths of the files this run indexes
        self._moves: dict[tuple[str, str], dict[str, Any]] = {}
        self._stale: set[tuple[str, str]] = set()
        self._recorded: dict[str, dict[str, Any]] = {}
        self._known_paths: set[str] = set()
        # manifest rows of files already committed, applied after the run's commits
        self._metadata_updates: dict[tuple[str, str], dict[str, Any]] = {}

    def _load_committed(self, files: list[SourceFile]) -> None:
        """Read what is committed now (under the ingest lock), for a run over ``files``."""
        self._known = self._located_sources()
        roots = Roots.of(self.collection.path.parent.parent).table()
        recorded = recorded_metadata(self.collection)
        self._recorded = {roots.resolve(p): meta for p, meta in recorded.items()}
        self._known_paths = {p for paths in self._known.values() for p in paths}
        self._run_files = {str(f.path.resolve()) for f in files}
        self._run_ids, self._moves = {}, {}
        self._stale = set()

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

    # -- metadata ------------------------------------------------------------------------------
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

    # -- identity: new, duplicate, moved, replaced --------------------------------------------
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

    def _record_new(self, sid: str, path: str) -> None:
        """Note a source added to the run's segment: other bytes committed at ``path`` are
        replaced (their rows go at the next commit)."""
        for old in {s for s, paths in self._known.items() if path in paths and s != sid}:
            self._stale.add((old, self._stored.get((old, path), path)))  # its old rows go
            self.report.replaced.append({"file": path, "old_source_id": old})
        self._known.setdefault(sid, []).append(path)
        self._run_ids[sid] = path
