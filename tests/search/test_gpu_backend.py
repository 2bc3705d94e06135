"""The torch scoring backend gives the numpy backend's answers (torch-cpu here, CUDA if present).

Real segments on disk (float32 and float16), real filter masks, real IVF indexes; the torch
backend is built with tiny blocks so multi-block merging, the sparse/dense mask paths and the
cross-block tie rule are all exercised on small data.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from lamina.search import Store, planner
from lamina.search.ann import AnnIndex, update_index
from lamina.search.filters import parse_filters
from lamina.search.gpu import TorchBackend, torch_backend
from lamina.search.scan import NumpyBackend
from lamina.search.segment_reader import SegmentReader, reader_for
from lamina.search.store import Collection
from lamina.search.views import CollectionView

DIM = 48
LABELS = ("A", "B", "C", "D")


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _build(home: Path, dtype: str, sizes: tuple[int, ...], seed: int) -> Collection:
    """A collection of one segment per size, sources of 50 tiles, a label and an int column."""
    col = Store(home).open_or_create(
        f"c-{dtype}",
        encoder="test/x",
        fingerprint="test/x@1",
        embed_dim=DIM,
        tile_px=224,
        mpp=0.5,
        vector_dtype=dtype,
    )
    rng = np.random.default_rng(seed)
    for s, size in enumerate(sizes):
        w = col.writer(f"run{s}")
        for lo in range(0, size, 50):
            n = min(50, size - lo)
            rows = [
                {
                    "x": i,
                    "y": lo,
                    "level": 0,
                    "size_px": 224,
                    "tile_px": 224,
                    "mpp": 0.5,
                    "tissue_fraction": 1.0,
                    "label": LABELS[int(rng.integers(len(LABELS)))],
                    "rank": int(rng.integers(1000)),
                }
                for i in range(n)
            ]
            src = {"source_id": f"s{s}-{lo}", "source": f"/d/{s}-{lo}.svs", "kind": "slide"}
            w.add_source(src, rows, _unit(rng, n))
        w.commit()
    return col


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Collection]:
    home = tmp_path_factory.mktemp("gpu-home")
    return {
        dt: _build(home, dt, (1800, 700), seed) for seed, dt in enumerate(("float32", "float16"))
    }


@pytest.fixture()
def small_blocks() -> TorchBackend:
    """The torch-cpu backend with ~1k-row blocks (several blocks per segment)."""
    backend = TorchBackend("cpu", block_bytes=1 << 18)
    assert backend._block_rows(DIM, 1) < 1800
    return backend


def _same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for (gs, gr), (ws, wr) in zip(got, want, strict=True):
        assert gr.dtype == np.int64 and gs.dtype == np.float32
        np.testing.assert_array_equal(gr, wr)
        np.testing.assert_allclose(gs, ws, atol=1e-5, rtol=0)
        assert np.all(np.diff(gs) <= 0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_exact_matches_numpy(
    collections: dict[str, Collection], small_blocks: TorchBackend, dtype: str
) -> None:
    reader = reader_for(collections[dtype].segments()[0])
    assert reader.vectors.dtype == np.dtype(dtype)
    rng = np.random.default_rng(7)
    queries = _unit(rng, 6)
    n = reader.n
    masks = {
        "none": None,
        "dense": rng.random(n) < 0.6,
        "sparse": rng.random(n) < 0.03,
        "few": np.isin(np.arange(n), [3, 900, 1799]),
        "empty": np.zeros(n, bool),
    }
    numpy = NumpyBackend()
    for name, mask in masks.items():
        for k in (1, 10, 200):
            got = small_blocks.exact(reader, queries, k, mask)
            want = numpy.exact(reader, queries, k, mask)
            _same(got, want)
            matches = n if mask is None else int(mask.sum())
            assert all(len(r) == min(k, matches) for _, r in got), (name, k)
            if mask is not None:
                assert all(mask[r].all() for _, r in got), name
    # k beyond the segment: every row, once, in order
    _same(
        small_blocks.exact(reader, queries, n + 5, None), numpy.exact(reader, queries, n + 5, None)
    )
    assert small_blocks.exact(reader, queries[:0], 10, None) == []


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_candidate_rows_match_numpy(
    collections: dict[str, Collection], small_blocks: TorchBackend, dtype: str
) -> None:
    reader = reader_for(collections[dtype].segments()[0])
    rng = np.random.default_rng(3)
    numpy = NumpyBackend()
    for size, k in ((2, 10), (40, 10), (1500, 25), (1500, 1500)):
        rows = np.sort(rng.choice(reader.n, size, replace=False))
        q = _unit(rng, 1)[0]
        _same([small_blocks.rows(reader, rows, q, k)], [numpy.rows(reader, rows, q, k)])
    got = small_blocks.rows(reader, np.zeros(0, np.int64), q, 5)
    assert len(got[0]) == 0 and len(got[1]) == 0


def test_ties_go_to_the_lower_row_across_blocks(tmp_path: Path) -> None:
    """Duplicated vectors score identically; the lower rows win, also across block borders."""
    col = Store(tmp_path).open_or_create(
        "dup", encoder="test/x", fingerprint="test/x@1", embed_dim=DIM, tile_px=224, mpp=0.5
    )
    rng = np.random.default_rng(11)
    base = _unit(rng, 30)
    vectors = base[rng.integers(0, 30, 3000)]  # every vector appears ~100 times
    w = col.writer("r")
    rows = [
        {"x": i, "y": 0, "level": 0, "size_px": 1, "tile_px": 1, "mpp": 0.5} for i in range(3000)
    ]
    w.add_source({"source_id": "s", "source": "/s", "kind": "slide"}, rows, vectors)
    reader = reader_for(w.commit())  # type: ignore[arg-type]
    backend = TorchBackend("cpu", block_bytes=1 << 18)
    q = _unit(rng, 3)
    scores = np.asarray(reader.vectors, np.float32) @ q.T
    for k in (5, 150):
        for j, (s, r) in enumerate(backend.exact(reader, q, k, None)):
            order = np.lexsort((np.arange(3000), -scores[:, j]))[:k]
            np.testing.assert_array_equal(r, order)
            np.testing.assert_allclose(s, scores[order, j], atol=1e-5)
        s, r = backend.rows(reader, np.arange(0, 3000, 2), q[0], k)
        sub = np.arange(0, 3000, 2)
        np.testing.assert_array_equal(r, sub[np.lexsort((sub, -scores[sub, 0]))[:k]])


def test_vectors_uploaded_once_and_freed_with_the_reader(
    collections: dict[str, Collection],
) -> None:
    info = collections["float16"].segments()[1]
    backend = TorchBackend("cpu")
    reader = SegmentReader(info)  # a private reader, not the process-wide one
    q = _unit(np.random.default_rng(0), 2)
    backend.exact(reader, q, 5, None)
    first = backend.vectors_of(reader)
    assert str(first.dtype) == "torch.float16"  # stored dtype kept on the device
    assert backend.cached_bytes == info.n_tiles * DIM * 2
    backend.rows(reader, np.arange(10), q[0], 3)
    assert backend.vectors_of(reader) is first
    del reader, first
    gc.collect()
    assert backend.cached_bytes == 0


@pytest.mark.parametrize("factory", ["Flat", "IVF16"])
def test_planner_same_positions(
    collections: dict[str, Collection], small_blocks: TorchBackend, factory: str
) -> None:
    col = collections["float32"]
    col.set_index(factory)
    update_index(col)
    view = CollectionView(col, col.snapshot(), AnnIndex.load(col))
    assert (view.ann is not None) == (factory != "Flat")
    queries = _unit(np.random.default_rng(5), 8)
    filters = [[], ["label=A"], ["label=B,C", "rank>=500"], ["rank<15"]]
    for exprs in filters:
        conds = parse_filters(exprs)
        for params in ({"nprobe": 4}, {"strategy": "ann", "nprobe": 2}, {"strategy": "exact"}):
            if factory == "Flat" and params.get("strategy") == "ann":
                continue
            got, plan = planner.search(view, queries, 10, conds, params, backend=small_blocks)
            want, wplan = planner.search(view, queries, 10, conds, params, backend=NumpyBackend())
            assert plan.backend == "torch-cpu" and wplan.backend == "numpy"
            assert plan.strategy == wplan.strategy
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g.positions, w.positions)
                np.testing.assert_allclose(g.scores, w.scores, atol=1e-5, rtol=0)
    col.set_index("Flat")


def test_backend_choice() -> None:
    import torch

    assert torch_backend("torch-cpu").name == "torch-cpu"
    auto = torch_backend("auto")
    assert auto.name == ("torch-cuda" if torch.cuda.is_available() else "numpy")
    with pytest.raises(ValueError):
        torch_backend("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch_backend("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_matches_numpy(collections: dict[str, Collection], dtype: str) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    backend = torch_backend("cuda")
    assert backend.name == "torch-cuda"
    numpy = NumpyBackend()
    rng = np.random.default_rng(2)
    queries = _unit(rng, 16)
    for info in collections[dtype].segments():
        reader = reader_for(info)
        for mask in (None, rng.random(reader.n) < 0.5, rng.random(reader.n) < 0.02):
            _same(backend.exact(reader, queries, 10, mask), numpy.exact(reader, queries, 10, mask))
        rows = np.sort(rng.choice(reader.n, 300, replace=False))
        _same(
            [backend.rows(reader, rows, queries[0], 10)], [numpy.rows(reader, rows, queries[0], 10)]
        )
