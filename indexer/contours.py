"""Polygons of a boolean mask: the exact outline of its pixels, as valid simple rings.

Method: every side a foreground pixel shares with background (or the mask's border) is a unit
edge, oriented so that foreground lies on one fixed side (pixel (row i, column j) contributes
``(j, i) -> (j+1, i)`` on top, ``(j+1, i) -> (j+1, i+1)`` on the right, and so on around it).
The edges are chained into closed walks; a walk that passes a vertex twice (two pixels touching
only at a corner) is split there, so every ring is simple. Collinear vertices are dropped.

Coordinates are mask pixel corners: x right, y down (QuPath and image convention). In these
coordinates a shell's shoelace area is positive (counter-clockwise by the right-hand rule,
as RFC 7946 asks of exterior rings) and a hole's is negative. Each hole belongs to the smallest
shell that contains it; a polygon is ``[shell, hole, ...]``. Rings may touch at single points
(valid in GeoJSON / OGC terms) but never cross, and their areas sum to the mask's pixel count.
"""

from __future__ import annotations

import numpy as np

Ring = np.ndarray
"""(k, 2) float64 vertices (x, y), not repeating the first at the end."""


def _edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(start vertex id, end vertex id, vertex row stride) of every boundary unit edge."""
    m = np.pad(np.asarray(mask, bool), 1)
    stride = m.shape[1] + 1
    core = m[1:-1, 1:-1]
    i, j = np.nonzero(core & ~m[:-2, 1:-1])  # top
    starts, ends = [(i * stride + j)], [(i * stride + j + 1)]
    i, j = np.nonzero(core & ~m[1:-1, 2:])  # right
    starts.append(i * stride + j + 1)
    ends.append((i + 1) * stride + j + 1)
    i, j = np.nonzero(core & ~m[2:, 1:-1])  # bottom
    starts.append((i + 1) * stride + j + 1)
    ends.append((i + 1) * stride + j)
    i, j = np.nonzero(core & ~m[1:-1, :-2])  # left
    starts.append((i + 1) * stride + j)
    ends.append(i * stride + j)
    return np.concatenate(starts), np.concatenate(ends), stride


def _walks(start: np.ndarray, end: np.ndarray, stride: int) -> list[list[int]]:
    """Closed walks (vertex ids) using every edge once. At a vertex where two foreground
    pixels touch only diagonally the walk turns towards the foreground, so foreground is
    4-connected (and background 8-connected): each polygon's interior is then connected."""
    step = (end - start).tolist()
    turn = {1: stride, stride: -1, -1: -stride, -stride: 1}  # right turn, x right / y down
    order = np.argsort(start, kind="stable")
    sorted_start = start[order]
    used = np.zeros(len(start), bool)
    walks: list[list[int]] = []
    starts_l, order_l = start.tolist(), order.tolist()
    lo_of = np.searchsorted(sorted_start, end, side="left").tolist()
    hi_of = np.searchsorted(sorted_start, end, side="right").tolist()
    for e0 in range(len(start)):
        if used[e0]:
            continue
        walk: list[int] = []
        e = e0
        while True:
            used[e] = True
            walk.append(starts_l[e])
            nxt = -1
            cands = [k for k in order_l[lo_of[e] : hi_of[e]] if not used[k]]
            if len(cands) == 1:
                nxt = cands[0]
            elif cands:  # a saddle: turn towards the foreground (keeps diagonal pixels apart)
                right = turn[step[e]]
                nxt = next((k for k in cands if step[k] == right), cands[0])
            if nxt < 0:
                break
            e = nxt
        walks.append(walk)
    return walks


def _split(walk: list[int]) -> list[list[int]]:
    """Split a closed walk at repeated vertices into simple rings."""
    out: list[list[int]] = []
    stack: list[int] = []
    pos: dict[int, int] = {}
    for v in walk:
        k = pos.get(v)
        if k is None:
            pos[v] = len(stack)
            stack.append(v)
            continue
        out.append(stack[k:])
        for u in stack[k + 1 :]:
            del pos[u]
        del stack[k + 1 :]
    if stack:
        out.append(stack)
    return out


def _simplify(ring: np.ndarray) -> np.ndarray:
    """Drop vertices where the ring goes straight on."""
    prev = np.roll(ring, 1, axis=0)
    nxt = np.roll(ring, -1, axis=0)
    a, b = ring - prev, nxt - ring
    turn = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    return ring[turn != 0]


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area: positive for shells, negative for holes (x right, y down)."""
    x, y = ring[:, 0], ring[:, 1]
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def _contains(ring: np.ndarray, x: float, y: float) -> bool:
    """Even-odd rule: is (x, y), not on the ring, inside it?"""
    xi, yi = ring[:, 0], ring[:, 1]
    xj, yj = np.roll(xi, -1), np.roll(yi, -1)
    cross = (yi > y) != (yj > y)
    if not cross.any():
        return False
    xs = xi[cross] + (xj[cross] - xi[cross]) * (y - yi[cross]) / (yj[cross] - yi[cross])
    return bool(np.count_nonzero(x < xs) % 2)


def mask_polygons(mask: np.ndarray) -> list[list[Ring]]:
    """Polygons ``[shell, *holes]`` outlining the True pixels of a 2-D mask (see the module
    docstring), largest shell first; vertices in mask pixel-corner coordinates."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2 or not mask.any():
        return []
    start, end, stride = _edges(mask)
    shells: list[tuple[Ring, float]] = []
    holes: list[Ring] = []
    for walk in _walks(start, end, stride):
        for ids in _split(walk):
            v = np.asarray(ids, np.int64)
            ring = np.stack([v % stride, v // stride], axis=1).astype(np.float64)
            probe = (ring[0] + ring[1 % len(ring)]) / 2  # an edge midpoint: never on another ring
            ring = _simplify(ring)
            if len(ring) < 4:
                continue
            area = signed_area(ring)
            if area > 0:
                shells.append((ring, area))
            else:
                holes.append(np.concatenate([ring, probe[None]]))
    shells.sort(key=lambda s: -s[1])
    polygons: list[list[Ring]] = [[s] for s, _ in shells]
    boxes = [(s[:, 0].min(), s[:, 1].min(), s[:, 0].max(), s[:, 1].max()) for s, _ in shells]
    for h in holes:
        ring, (px, py) = h[:-1], h[-1]
        best = -1
        for k in range(len(shells) - 1, -1, -1):  # smallest shell first
            x0, y0, x1, y1 = boxes[k]
            if x0 <= px <= x1 and y0 <= py <= y1 and _contains(shells[k][0], px, py):
                best = k
                break
        if best >= 0:
            polygons[best].append(ring)
    return polygons
