"""Reading a slide's planned tiles in parallel worker threads, handed out in plan order.

At most ``window`` reads are in flight or waiting to be consumed (a bounded queue), so memory
stays flat however large the slide is. OpenSlide releases the GIL while it decodes, and one
OpenSlide handle may be used from several threads at once, so the workers share one handle.
A failed read raises from ``__next__`` (for that tile, in plan order); ``close`` cancels what is
still queued and waits for the reads in flight.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


class TileStream(Iterator[np.ndarray], Generic[T]):
    """Iterator of ``read(item)`` over ``items`` in order, computed ``workers`` at a time."""

    def __init__(
        self,
        read: Callable[[T], np.ndarray],
        items: Sequence[T],
        workers: int = 4,
        window: int = 64,
        name: str = "lamina-tiles",
    ) -> None:
        self._read = read
        self._items = items
        self._workers = max(1, workers)
        self._window = max(self._workers, window)
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[np.ndarray]] = deque()
        self._submitted = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> TileStream[T]:
        return self

    def _fill(self) -> None:
        if self._pool is None:
            return
        while self._submitted < len(self._items) and len(self._pending) < self._window:
            self._pending.append(self._pool.submit(self._read, self._items[self._submitted]))
            self._submitted += 1

    def __next__(self) -> np.ndarray:
        if self._closed:
            raise StopIteration
        if self._pool is None:
            if not self._items:
                self.close()
                raise StopIteration
            self._pool = ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix=self._name
            )
            self._fill()
        if not self._pending:
            self.close()
            raise StopIteration
        fut = self._pending.popleft()
        try:
            image = fut.result()
        except BaseException:
            self.close()
            raise
        self._fill()
        return image

    def close(self) -> None:
        """Cancel queued reads and wait for those in flight. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
