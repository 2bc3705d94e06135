"""The ingest's progress bar and per-slide summary rows.

The bar counts tiles, not files: its total grows as sources are opened (a slide's tile count is
known once its tissue is found, in a reader thread ahead of the encoder), and it advances as
encoder batches finish, so its rate is tiles per second. Files done / files in the run and the
failures are shown beside it. Thread-safe: preparation threads add to the total while the main
thread advances.

A summary row per slide (:func:`slide_row`): file name, tiles kept, tissue share of the slide,
level-0 µm/px and where it came from (``properties``: the slide's own metadata, ``manifest``,
``override``: ``--mpp-override``), and wall seconds from the start of its preparation to its
vectors (the slides of a run overlap, so the seconds add up to more than the run's).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any


class TileProgress:
    """A tqdm bar over tiles whose total grows; no-op when ``enabled`` is False."""

    def __init__(self, files: int, enabled: bool, desc: str) -> None:
        self.files = files
        self.done = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            tty = sys.stderr.isatty()
            self._bar = tqdm(
                total=0,
                unit="tile",
                desc=desc,
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
                mininterval=0.2 if tty else 5.0,
            )
            self._postfix()

    def planned(self, tiles: int) -> None:
        """A source was opened: its ``tiles`` join the total."""
        if self._bar is None or tiles <= 0:
            return
        with self._lock:
            self._bar.total += tiles
            self._bar.refresh()

    def advance(self, tiles: int) -> None:
        """``tiles`` were embedded."""
        if self._bar is not None and tiles > 0:
            with self._lock:
                self._bar.update(tiles)

    def source_done(self, failed: int) -> None:
        """One file finished (committed, skipped or failed); ``failed`` so far in the run."""
        self.done += 1
        self.failed = failed
        if self._bar is not None:
            with self._lock:
                self._postfix()

    def drop(self, tiles: int) -> None:
        """Tiles planned but never embedded (their source failed): out of the total."""
        if self._bar is not None and tiles > 0:
            with self._lock:
                self._bar.total = max(self._bar.n, self._bar.total - tiles)
                self._bar.refresh()

    def _postfix(self) -> None:
        self._bar.set_postfix_str(f"files {self.done}/{self.files}, failed {self.failed}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def slide_row(source: dict[str, Any], tiles: int, seconds: float | None) -> dict[str, Any]:
    """The summary row of one committed slide (see the module docstring)."""
    props = source.get("properties") or {}
    if not isinstance(props, dict):
        props = {}
    fraction = props.get("tissue_fraction")
    mpp = source.get("mpp")
    return {
        "slide": Path(str(source.get("source") or "")).name,
        "source_id": source.get("source_id"),
        "tiles": int(tiles),
        "grid_tiles": props.get("grid_tiles"),
        "tissue_fraction": None if fraction is None else round(float(fraction), 4),
        "mpp": None if mpp is None else round(float(mpp), 5),
        "mpp_source": props.get("mpp_source"),
        "seconds": None if seconds is None else round(seconds, 2),
    }


def slide_table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as an aligned text table (slide, tiles, tissue %, mpp, mpp source, seconds)."""
    if not rows:
        return []
    head = ("slide", "tiles", "tissue", "mpp", "mpp from", "seconds")
    body = [
        (
            str(r["slide"]),
            str(r["tiles"]),
            "-" if r["tissue_fraction"] is None else f"{100 * r['tissue_fraction']:.1f}%",
            "-" if r["mpp"] is None else f"{r['mpp']:.4g}",
            str(r.get("mpp_source") or "-"),
            "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    right = {1, 2, 3, 5}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(head), *(line(b) for b in body)]
