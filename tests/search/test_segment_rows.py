"""Hit rows read by position equal what Arrow itself returns for the same rows.

``SegmentReader.take_rows`` reads each column through a cached array (dictionary codes,
numpy values and a validity bitmap); this pins it to ``pyarrow.Table.take(...).to_pylist()``
for every column kind a manifest can produce, nulls included.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from lamina.search.segment_reader import reader_for
from lamina.search.store import Store


def test_take_rows_equals_arrow(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n, dim = 300, 8
    col = Store(tmp_path).open_or_create(
        "c", encoder="test/x", fingerprint="test/x@1", embed_dim=dim, tile_px=224, mpp=0.5
    )
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [
        {
            "x": i,
            "y": 2 * i,
            "level": 0,
            "size_px": 224,
            "tile_px": 224,
            "mpp": None if i % 7 == 0 else 0.25 * i,
            "tissue_fraction": 0.5,
            "kind": "photo",
            "age": None if i % 5 == 0 else int(i % 90),
            "label": None if i % 11 == 0 else ["MEL", "BCC", "NEV"][i % 3],
            "biopsed": bool(i % 2),
            "score": float("nan") if i % 13 == 0 else i / 3,
            "seen": dt.datetime(2020, 1, 1) + dt.timedelta(days=i),
        }
        for i in range(n)
    ]
    w = col.writer("test")
    w.add_source(
        {
            "source_id": "ab" * 32,
            "source": "a.png",
            "kind": "photo",
            "width": 1,
            "height": 1,
            "mpp": None,
            "properties": {},
        },
        rows,
        vectors,
    )
    info = w.commit()
    assert info is not None
    reader = reader_for(info)
    pick = np.array([0, 5, 7, 11, 13, 299, 42, 0, 150])
    want = reader.table.take(pa.array(pick)).to_pylist()
    got = reader.take_rows(pick)
    for g, w_ in zip(got, want, strict=True):
        assert g.pop("segment_id") == info.segment_id and isinstance(g.pop("row"), int)
        assert g.keys() == w_.keys()
        for key, value in w_.items():
            if isinstance(value, float) and value != value:
                assert g[key] != g[key], key
            else:
                assert g[key] == value and type(g[key]) is type(value), (key, g[key], value)
    assert reader.take_rows(pick[:0]) == []
    sub = reader.take_rows(pick[:2], columns=["label", "age"])
    assert [{k: r[k] for k in ("label", "age")} for r in sub] == [
        {"label": None, "age": None},
        {"label": "NEV", "age": None},
    ]
