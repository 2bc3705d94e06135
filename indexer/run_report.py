"""The record of one ingest run: what was indexed, skipped, moved, replaced or failed, and why.

``RunReport`` is filled in by the run as it goes and written once, at the end, as
``runs/<run_id>.json`` of the collection (:meth:`RunReport.save`). Counts (``indexed``,
``tiles``) are of sources and tile vectors *committed* by this run; lists hold one row per file
(``{"file": path, ...}``, the path as given to the run). Times are UTC ISO-8601 strings
(``started_at``/``finished_at``) and wall seconds (``seconds``). Invariant: ``ok`` is true only
when nothing failed, the run was not interrupted and no store error stopped it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from lamina.search.errors import StoreIOError, io_failure
from lamina.search.store import Collection


def utc_now() -> str:
    """The current time as a UTC ISO-8601 string to the second (``2024-01-31T12:00:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
