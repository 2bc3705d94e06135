"""The raw peers of the search-at-scale benchmark: FAISS and LanceDB on the same data and queries.

- ``faiss_flat``: IndexFlatIP; filters through IDSelectorBitmap (exact);
- ``faiss_ivf``: IndexIVFFlat (``ivf_nlist(n)`` lists), trained on a seeded sample of at most
  ``train_per_list`` x nlist vectors; nprobe the smallest of ``NPROBES`` reaching unfiltered
  recall@10 >= ``TARGET_RECALL``; filters through IDSelectorBitmap at that nprobe;
- ``lancedb``: embedded LanceDB, IVF_PQ (sqrt(n) partitions, dim/8 sub-vectors, dot), scalar
  indexes on the filter columns, ``where(..., prefilter=True)``; nprobes tuned like FAISS's on
  unfiltered queries at ``refine_factor``, the refine_factor raised (20, 50, 100) only where
  recall plateaus below the target (PQ-limited).

Each ``run_*`` returns one row per filter (quality and latency from
:func:`bench.scale_measure.measure`: recall fractions, milliseconds, queries/s) and a stage
record: build, train and write times in seconds, the tuned parameters and the recall curve they
were picked from. Result ids are rows of the generated data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.scale_data import LABELS, FilterSpec, ScaleData, patient_name, site_name
from bench.scale_measure import NPROBES, TARGET_RECALL, K, Rows, ivf_nlist, measure, quality


def _faiss_rows(
    index: Any,
    system: str,
    queries: np.ndarray,
    filters: list[FilterSpec],
    gts: list[np.ndarray],
    nprobe: int | None,
    row_params: dict[str, Any],
) -> Rows:
    """One measured row per filter; filters through IDSelectorBitmap, IVF at ``nprobe``."""
    import faiss

    rows: Rows = []
    for f, gt in zip(filters, gts, strict=True):
        selector: dict[str, Any] = {}
        if f.mask is not None:  # the bitmap must outlive the searches that use the selector
            bitmap = np.packbits(f.mask, bitorder="little")
            selector = {"sel": faiss.IDSelectorBitmap(bitmap)}  # type: ignore[call-arg, arg-type]
        params: Any = None
        if nprobe is not None:
            params = faiss.SearchParametersIVF(nprobe=nprobe, **selector)  # type: ignore[call-arg]
        elif selector:
            params = faiss.SearchParameters(**selector)

        def one(i: int, p: Any = params) -> np.ndarray:
            return index.search(queries[i : i + 1], K, params=p)[1][0]

        def batch(p: Any = params) -> list[np.ndarray]:
            return list(index.search(queries, K, params=p)[1])

        m = measure(one, batch, gt, f.mask, len(queries))
        rows.append({"system": system, "filter": f.name, **m, "params": row_params})
        selector.clear()
    return rows


def run_faiss_flat(
    vectors: np.ndarray, queries: np.ndarray, filters: list[FilterSpec], gts: list[np.ndarray]
) -> tuple[Rows, dict[str, Any]]:
    """Exact inner-product search over all vectors, filtered by bitmap."""
    import faiss

    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, np.float32))
    info = {"build_seconds": round(time.perf_counter() - t0, 3)}
    return _faiss_rows(index, "faiss_flat", queries, filters, gts, None, {}), info


def run_faiss_ivf(
    vectors: np.ndarray,
    queries: np.ndarray,
    filters: list[FilterSpec],
    gts: list[np.ndarray],
    train_per_list: int,
    seed: int,
) -> tuple[Rows, dict[str, Any]]:
    """IndexIVFFlat at the smallest nprobe reaching the target recall unfiltered."""
    import faiss

    n, dim = vectors.shape
    nlist = ivf_nlist(n)
    n_train = min(n, train_per_list * nlist)
    rng = np.random.default_rng([seed, 10])
    sample = np.sort(rng.choice(n, size=n_train, replace=False))
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(vectors[sample], np.float32))
    t_train = time.perf_counter() - t0
    index.add(np.ascontiguousarray(vectors, np.float32))
    info: dict[str, Any] = {
        "nlist": nlist,
        "train_vectors": n_train,
        "train_rule": f"seeded sample of min(n, {train_per_list} x nlist)",
        "kmeans_iterations": int(index.cp.niter),
        "train_seconds": round(t_train, 3),
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    curve = {}
    best = NPROBES[-1]
    for p in NPROBES:
        index.nprobe = p
        r = quality(list(index.search(queries, K)[1]), gts[0], None)["recall_at_10"]
        curve[str(p)] = r
        if r >= TARGET_RECALL:
            best = p
            break
    index.nprobe = best
    info.update(nprobe=best, recall_by_nprobe=curve)
    row_params = {"nlist": nlist, "nprobe": best}
    return _faiss_rows(index, "faiss_ivf", queries, filters, gts, best, row_params), info


def lance_table(data: ScaleData, **extra: Any) -> Any:
    """The collection as one Arrow table for LanceDB: id, vector and the metadata columns the
    filters use, plus ``extra`` columns (name -> Arrow array of n values)."""
    import pyarrow as pa

    n, dim = data.vectors.shape
    flat = pa.array(np.asarray(data.vectors, np.float32).reshape(-1), pa.float32())
    patients = [patient_name(int(p)) for p in range(int(data.slide_patient.max()) + 1)]
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
            "label": pa.array(np.asarray(LABELS)[data.label]),
            "site": pa.array([site_name(int(s)) for s in data.tile_site()]),
            "patient_id": pa.array(np.asarray(patients)[data.tile_patient()]),
            "scan_year": pa.array(data.tile_year().astype(np.int32)),
            **extra,
        }
    )


def run_lancedb(
    home: Path,
    data: ScaleData,
    filters: list[FilterSpec],
    gts: list[np.ndarray],
    refine_factor: int,
) -> tuple[Rows, dict[str, Any]]:
    """Embedded LanceDB, IVF_PQ with scalar indexes and prefiltering, tuned to the target."""
    import lancedb

    n, dim = data.vectors.shape
    queries = data.queries
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    db = lancedb.connect(str(home / "lancedb"))
    tbl = db.create_table(f"scale_n{n}", data=lance_table(data), mode="overwrite")
    info["write_seconds"] = round(time.perf_counter() - t0, 3)
    partitions = max(1, int(round(np.sqrt(n))))
    sub_vectors = dim // 8
    t0 = time.perf_counter()
    try:  # the current API (lancedb >= 0.25); the older keyword form is deprecated
        from lancedb.index import IvfPq

        tbl.create_index(
            "vector",
            config=IvfPq(
                distance_type="dot", num_partitions=partitions, num_sub_vectors=sub_vectors
            ),
        )
    except (ImportError, TypeError):
        tbl.create_index(
            metric="dot",
            num_partitions=partitions,
            num_sub_vectors=sub_vectors,
            index_type="IVF_PQ",
        )
    info["index_build_seconds"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    for col, kind in (
        ("label", "BITMAP"),
        ("site", "BITMAP"),
        ("patient_id", "BTREE"),
        ("scan_year", "BTREE"),
    ):
        try:  # the current API; create_scalar_index is deprecated since lancedb 0.25
            from lancedb.index import Bitmap, BTree

            tbl.create_index(col, config=Bitmap() if kind == "BITMAP" else BTree())
        except (ImportError, TypeError):
            tbl.create_scalar_index(col, index_type=kind)  # type: ignore[arg-type]
    info["scalar_index_seconds"] = round(time.perf_counter() - t0, 3)
    info.update(
        index="IVF_PQ",
        num_partitions=partitions,
        num_sub_vectors=sub_vectors,
        metric="dot",
        scalar_indexes={
            "label": "BITMAP",
            "site": "BITMAP",
            "patient_id": "BTREE",
            "scan_year": "BTREE",
        },
    )

    def query(q: np.ndarray, f: FilterSpec, nprobes: int, refine: int) -> Any:
        qb = (
            tbl.search(q, vector_column_name="vector")  # type: ignore[attr-defined]
            .distance_type("dot")
            .minimum_nprobes(nprobes)
            .maximum_nprobes(0)  # more partitions only when a filter leaves fewer than k
            .refine_factor(refine)
            .limit(K)
            .select(["id", "_distance"])
        )
        if f.sql is not None:
            qb = qb.where(f.sql, prefilter=True)
        return qb

    def ids_of(q: np.ndarray, f: FilterSpec, nprobes: int, refine: int) -> np.ndarray:
        return query(q, f, nprobes, refine).to_arrow()["id"].to_numpy()

    # nprobes first (at --refine-factor); where recall plateaus below the target (PQ-limited),
    # a larger refine_factor. The first setting reaching the target wins, else the best seen.
    n_tune = min(len(queries), 50)
    curve: dict[str, float] = {}
    best, best_rf, best_r = NPROBES[-1], refine_factor, -1.0
    done = False
    for rf in sorted({refine_factor, 20, 50, 100}):
        prev = -1.0
        for p in NPROBES:
            res = [ids_of(queries[i], filters[0], p, rf) for i in range(n_tune)]
            r = quality(res, gts[0][:n_tune], None)["recall_at_10"]
            curve[f"refine{rf}_nprobes{p}"] = r
            if r > best_r:
                best, best_rf, best_r = p, rf, r
            if r >= TARGET_RECALL:
                done = True
                break
            if r <= prev + 0.002 and p >= 4:  # plateau: more partitions do not help
                break
            prev = r
        if done:
            break
    info.update(
        nprobes=best,
        nprobes_mode="minimum_nprobes=nprobes, maximum_nprobes=0 (unbounded, on demand)",
        refine_factor=best_rf,
        recall_by_setting=curve,
        tuned_on_queries=n_tune,
    )
    rows: Rows = []
    for f, gt in zip(filters, gts, strict=True):

        def one(i: int, f: FilterSpec = f) -> np.ndarray:
            return ids_of(queries[i], f, best, best_rf)

        def batch(f: FilterSpec = f) -> list[np.ndarray]:
            t = query(queries, f, best, best_rf).to_arrow()
            qi = t["query_index"].to_numpy()
            ids = t["id"].to_numpy()
            return [ids[qi == i] for i in range(len(queries))]

        m = measure(one, batch, gt, f.mask, len(queries))
        rows.append(
            {
                "system": "lancedb",
                "filter": f.name,
                **m,
                "params": {"nprobes": best, "refine_factor": best_rf, "prefilter": True},
            }
        )
    return rows, info
