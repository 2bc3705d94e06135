"""Synthetic tile collections for the search-at-scale benchmark: data, filters, ground truth.

Vectors are seeded, clustered 384-d unit vectors shaped like tile embeddings of whole-slide
images, not uniform noise:

- ``N_TYPES`` tissue-type centres (unit Gaussian directions), each type tied to one of
  ``LABELS`` (so the label correlates with where a tile lies in the space);
- slides of 100-2,000 tiles (log-normal, median 400), each mixing 2-6 tissue types;
  1-3 slides per patient; one of ``N_SITES`` hospitals per patient (Zipf-skewed), a scan year
  per slide;
- tile = normalise(type centre + site offset + slide offset + slide/type jitter + tile noise),
  with offset norms 0.2 / 0.35 / 0.15 and a noise norm of 0.6 (cosine between tiles of one type
  and slide about 0.75, of one type across slides about 0.65);
- a tile's ``label`` is its type's label 85 % of the time, else a random label.

Queries are held-out tiles generated the same way and never written to the collection: half are
new tiles of collection slides, half tiles of new slides (new patients).

Ground truth is the exact filtered top-k by inner product (brute force numpy, in chunks of
65,536 rows), ties broken by row. Rows are generation order; a fresh collection written by
:func:`write_collection` gives row ``i`` the ``i``-th tile id it allocates.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ["tumour", "stroma", "normal", "inflammation", "necrosis", "mucosa"]
LABEL_P = np.array([0.30, 0.24, 0.20, 0.13, 0.08, 0.05])
N_TYPES = 100
N_SITES = 20
YEARS = np.arange(2008, 2024)
SITE_NORM, SLIDE_NORM, JITTER_NORM, NOISE_NORM = 0.2, 0.35, 0.15, 0.6
LABEL_FIDELITY = 0.85
CHUNK = 65_536
ENCODER = "bench/synthetic"
FINGERPRINT = "bench/synthetic@0000000000000000"


@dataclass
class World:
    """The fixed generative parameters: tissue-type centres, their labels, site offsets."""

    dim: int
    type_centres: np.ndarray  # (N_TYPES, dim) float32 unit
    type_label: np.ndarray  # (N_TYPES,) int8 label code
    type_popularity: np.ndarray  # (N_TYPES,) float64, sums to 1
    site_offsets: np.ndarray  # (N_SITES, dim) float32
    site_p: np.ndarray  # (N_SITES,) float64


@dataclass
class ScaleData:
    """n tiles in row order, their slide-level and tile-level metadata, and the queries."""

    vectors: np.ndarray  # (n, dim) float32 unit rows
    slide: np.ndarray  # (n,) int32 slide index per tile
    label: np.ndarray  # (n,) int8 label code per tile
    slide_patient: np.ndarray  # (n_slides,) int32
    slide_site: np.ndarray  # (n_slides,) int16
    slide_year: np.ndarray  # (n_slides,) int16
    queries: np.ndarray  # (n_queries, dim) float32 unit rows, not in the collection
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.vectors)

    @property
    def n_slides(self) -> int:
        return len(self.slide_patient)

    def tile_patient(self) -> np.ndarray:
        return self.slide_patient[self.slide]

    def tile_site(self) -> np.ndarray:
        return self.slide_site[self.slide]

    def tile_year(self) -> np.ndarray:
        return self.slide_year[self.slide]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _gauss(rng: np.random.Generator, shape: tuple[int, ...], norm: float) -> np.ndarray:
    """Gaussian vectors whose expected norm is ``norm``."""
    return (rng.standard_normal(shape, dtype=np.float32) * (norm / np.sqrt(shape[-1]))).astype(
        np.float32
    )


def make_world(dim: int, seed: int) -> World:
    rng = np.random.default_rng([seed, 0])
    pop = rng.gamma(0.7, size=N_TYPES)
    site_rank = np.arange(1, N_SITES + 1, dtype=np.float64)
    site_p = 1.0 / site_rank**1.1
    return World(
        dim=dim,
        type_centres=_unit(rng.standard_normal((N_TYPES, dim))),
        type_label=rng.choice(len(LABELS), size=N_TYPES, p=LABEL_P).astype(np.int8),
        type_popularity=pop / pop.sum(),
        site_offsets=_gauss(rng, (N_SITES, dim), SITE_NORM),
        site_p=site_p / site_p.sum(),
    )


@dataclass
class _Slide:
    types: np.ndarray
    mix: np.ndarray
    centres: np.ndarray  # (len(types), dim) un-normalised per-type centres of this slide


def _new_slide(world: World, rng: np.random.Generator, site: int) -> _Slide:
    m = int(rng.integers(2, 7))
    types = rng.choice(N_TYPES, size=m, replace=False, p=world.type_popularity)
    mix = rng.dirichlet(np.ones(m))
    offset = _gauss(rng, (world.dim,), SLIDE_NORM)
    centres = (
        world.type_centres[types]
        + world.site_offsets[site]
        + offset
        + _gauss(rng, (m, world.dim), JITTER_NORM)
    )
    return _Slide(types=types, mix=mix, centres=centres)


def _tiles(
    world: World, rng: np.random.Generator, slide: _Slide, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, label codes) of ``count`` new tiles of ``slide``."""
    which = rng.choice(len(slide.types), size=count, p=slide.mix)
    vecs = _unit(slide.centres[which] + _gauss(rng, (count, world.dim), NOISE_NORM))
    labels = world.type_label[slide.types[which]].copy()
    flip = rng.random(count) > LABEL_FIDELITY
    labels[flip] = rng.integers(0, len(LABELS), size=int(flip.sum()))
    return vecs, labels.astype(np.int8)


def generate(n: int, dim: int, n_queries: int, seed: int = 0) -> ScaleData:
    """Generate ``n`` tiles and ``n_queries`` held-out queries (deterministic in the seed)."""
    world = make_world(dim, seed)
    rng = np.random.default_rng([seed, 1])
    vectors = np.empty((n, dim), np.float32)
    slide_idx = np.empty(n, np.int32)
    labels = np.empty(n, np.int8)
    slides: list[_Slide] = []
    patients: list[int] = []
    sites: list[int] = []
    years: list[int] = []
    filled, patient, left_for_patient, site = 0, -1, 0, 0
    while filled < n:
        if left_for_patient == 0:
            patient += 1
            left_for_patient = int(rng.integers(1, 4))
            site = int(rng.choice(N_SITES, p=world.site_p))
        left_for_patient -= 1
        count = int(np.clip(rng.lognormal(np.log(400), 0.7), 100, 2000))
        count = min(count, n - filled)
        s = _new_slide(world, rng, site)
        v, lab = _tiles(world, rng, s, count)
        vectors[filled : filled + count] = v
        labels[filled : filled + count] = lab
        slide_idx[filled : filled + count] = len(slides)
        slides.append(s)
        patients.append(patient)
        sites.append(site)
        years.append(int(rng.choice(YEARS)))
        filled += count
    qrng = np.random.default_rng([seed, 2])
    queries = np.empty((n_queries, dim), np.float32)
    for i in range(n_queries):
        if i % 2 == 0:  # a new tile of a collection slide
            s = slides[int(qrng.integers(len(slides)))]
        else:  # a tile of a new slide (new patient, random site)
            s = _new_slide(world, qrng, int(qrng.choice(N_SITES, p=world.site_p)))
        queries[i] = _tiles(world, qrng, s, 1)[0][0]
    return ScaleData(
        vectors=vectors,
        slide=slide_idx,
        label=labels,
        slide_patient=np.asarray(patients, np.int32),
        slide_site=np.asarray(sites, np.int16),
        slide_year=np.asarray(years, np.int16),
        queries=queries,
        meta={"n": n, "dim": dim, "n_queries": n_queries, "seed": seed},
    )


def extra_tiles(dim: int, count: int, seed: int) -> np.ndarray:
    """``count`` tiles of one new slide (for the commit-to-visible measurement)."""
    world = make_world(dim, seed)
    rng = np.random.default_rng([seed, 3])
    return _tiles(world, rng, _new_slide(world, rng, 0), count)[0]


# -- caching ------------------------------------------------------------------------------------
_ARRAYS = ("slide", "label", "slide_patient", "slide_site", "slide_year", "queries")


def load_or_generate(cache: Path, n: int, dim: int, n_queries: int, seed: int) -> ScaleData:
    """Generated data, cached as .npy under ``cache`` (vectors memory-mapped on reuse)."""
    key = cache / f"data_n{n}_d{dim}_q{n_queries}_s{seed}"
    done = key / "done.json"
    if done.is_file():
        arrays = {a: np.load(key / f"{a}.npy") for a in _ARRAYS}
        vectors = np.load(key / "vectors.npy", mmap_mode="r")
        return ScaleData(vectors=vectors, meta=json.loads(done.read_text()), **arrays)
    data = generate(n, dim, n_queries, seed)
    shutil.rmtree(key, ignore_errors=True)
    key.mkdir(parents=True)
    np.save(key / "vectors.npy", data.vectors)
    for a in _ARRAYS:
        np.save(key / f"{a}.npy", getattr(data, a))
    done.write_text(json.dumps(data.meta))
    return data


# -- metadata columns and filters ---------------------------------------------------------------
def patient_name(code: int) -> str:
    return f"P{code:05d}"


def site_name(code: int) -> str:
    return f"H{code + 1:02d}"


@dataclass
class FilterSpec:
    """One benchmark filter in each system's language, with its match mask."""

    name: str
    target: float | None  # the selectivity aimed at (None: unfiltered)
    lamina: dict[str, Any] | None  # Lamina's JSON filter form
    sql: str | None  # LanceDB ``where`` (DataFusion SQL)
    mask: np.ndarray | None  # (n,) bool, None = everything

    @property
    def fraction(self) -> float:
        return 1.0 if self.mask is None else float(self.mask.mean())


def _greedy(freq: dict[Any, float], target: float) -> list[Any]:
    """Values whose summed frequency comes close to ``target`` (largest first, never over 1.15x)."""
    chosen: list[Any] = []
    total = 0.0
    for value, f in sorted(freq.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        if total + f <= target * 1.15:
            chosen.append(value)
            total += f
    if not chosen:
        chosen = [min(freq, key=lambda v: abs(freq[v] - target))]
    return chosen


def _frequencies(codes: np.ndarray, n_codes: int) -> dict[int, float]:
    counts = np.bincount(codes.astype(np.int64), minlength=n_codes) / len(codes)
    return {i: float(c) for i, c in enumerate(counts) if c > 0}


def make_filters(data: ScaleData) -> list[FilterSpec]:
    """Unfiltered, ~1 %, ~10 %, ~50 % and all-but-one-patient filters, chosen on the data."""
    label_f = _frequencies(data.label, len(LABELS))
    site = data.tile_site()
    year = data.tile_year()
    patient = data.tile_patient()
    out = [FilterSpec("unfiltered", None, None, None, None)]

    # ~1 %: label = L AND scan_year >= Y (tile-level x slide-level, a combination)
    top_label, best_y, best_err = 0, int(YEARS[-1]), float("inf")
    for lab in sorted(label_f):
        is_lab = data.label == lab
        for y in YEARS:
            err = abs(float((is_lab & (year >= y)).mean()) - 0.01)
            if err < best_err:
                top_label, best_y, best_err = lab, int(y), err
    is_top = data.label == top_label
    out.append(
        FilterSpec(
            "sel_1pct",
            0.01,
            {"label": LABELS[top_label], "scan_year": {"gte": best_y}},
            f"label = '{LABELS[top_label]}' AND scan_year >= {best_y}",
            is_top & (year >= best_y),
        )
    )
    # ~10 %: a set of hospitals (slide-level)
    sites = _greedy(_frequencies(site, N_SITES), 0.10)
    names = [site_name(s) for s in sites]
    out.append(
        FilterSpec(
            "sel_10pct",
            0.10,
            {"site": {"in": names}},
            "site IN (" + ", ".join(f"'{s}'" for s in names) + ")",
            np.isin(site, sites),
        )
    )
    # ~50 %: a set of labels (tile-level, correlated with the vectors)
    labs = _greedy(label_f, 0.50)
    lnames = [LABELS[c] for c in labs]
    out.append(
        FilterSpec(
            "sel_50pct",
            0.50,
            {"label": {"in": lnames}},
            "label IN (" + ", ".join(f"'{s}'" for s in lnames) + ")",
            np.isin(data.label, labs),
        )
    )
    # all but the patient with the most tiles
    big = int(np.bincount(patient).argmax())
    out.append(
        FilterSpec(
            "all_but_one_patient",
            None,
            {"patient_id": {"ne": patient_name(big)}},
            f"patient_id != '{patient_name(big)}'",
            patient != big,
        )
    )
    return out


# -- ground truth -------------------------------------------------------------------------------
def exact_topk(
    vectors: np.ndarray, queries: np.ndarray, masks: list[np.ndarray | None], k: int
) -> list[np.ndarray]:
    """Exact filtered top-k rows by inner product, one (n_queries, k) int64 array per mask.

    One pass over the vectors in chunks; missing results (fewer than k matches) are -1.
    """
    nq = len(queries)
    best_s = [np.full((nq, k), -np.inf, np.float32) for _ in masks]
    best_i = [np.full((nq, k), -1, np.int64) for _ in masks]
    q = np.ascontiguousarray(queries, np.float32)
    for lo in range(0, len(vectors), CHUNK):
        chunk = np.asarray(vectors[lo : lo + CHUNK], np.float32)
        scores = q @ chunk.T
        rows = np.arange(lo, lo + len(chunk), dtype=np.int64)
        for f, mask in enumerate(masks):
            s = scores if mask is None else np.where(mask[lo : lo + len(chunk)], scores, -np.inf)
            kk = min(k, s.shape[1])
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            cand_s = np.concatenate([best_s[f], np.take_along_axis(s, part, 1)], axis=1)
            cand_i = np.concatenate([best_i[f], rows[part]], axis=1)
            cand_i[~np.isfinite(cand_s)] = -1
            # best score first, then lowest row; -1 (missing) rows sort last via -inf scores
            order = np.lexsort((np.where(cand_i < 0, np.iinfo(np.int64).max, cand_i), -cand_s))
            order = order[:, :k]
            best_s[f] = np.take_along_axis(cand_s, order, 1)
            best_i[f] = np.take_along_axis(cand_i, order, 1)
    return best_i


# -- writing a Lamina collection ----------------------------------------------------------------
LABEL_COLUMNS = ("patient_id", "label", "site", "scan_year")


def source_id_of(seed: int, slide: int) -> str:
    return hashlib.sha256(f"bench-scale-{seed}-slide-{slide}".encode()).hexdigest()


def tile_row(x: int, y: int, **columns: Any) -> dict[str, Any]:
    """A 224 px level-0 slide tile at (x, y) px, 0.5 um/px, all tissue, with ``columns``."""
    return {
        "x": x,
        "y": y,
        "level": 0,
        "size_px": 224,
        "tile_px": 224,
        "mpp": 0.5,
        "tissue_fraction": 1.0,
        "kind": "slide",
        **columns,
    }


def slide_source(source_id: str, name: str, width: int, height: int) -> dict[str, Any]:
    """A slide source record of ``width`` x ``height`` px at 0.5 um/px."""
    return {
        "source_id": source_id,
        "source": name,
        "kind": "slide",
        "width": width,
        "height": height,
        "mpp": 0.5,
        "properties": {},
    }


def write_collection(
    home: Path,
    name: str,
    data: ScaleData,
    *,
    seed: int,
    commit_every: int = 50_000,
    vector_dtype: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Write ``data`` as collection ``name`` through the store's public API; returns tile ids.

    One ``add_source`` per slide, a segment committed every ``commit_every`` tiles. This is the
    one place that writes, so a faster bulk writer can be switched in here.
    """
    from lamina.search.store import Store

    kwargs: dict[str, Any] = {}
    if vector_dtype is not None:
        kwargs["vector_dtype"] = vector_dtype
    col = Store(home).open_or_create(
        name,
        encoder=ENCODER,
        fingerprint=FINGERPRINT,
        embed_dim=int(data.vectors.shape[1]),
        tile_px=224,
        mpp=0.5,
        **kwargs,
    )
    run_id = time.strftime("bench-%Y%m%dT%H%M%S")
    ids = np.empty(data.n, np.int64)
    bounds = np.flatnonzero(np.diff(data.slide)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [data.n]])
    writer = col.writer(run_id)
    for s, (lo, hi) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        count = hi - lo
        cols = 50
        meta = {
            "patient_id": patient_name(int(data.slide_patient[s])),
            "site": site_name(int(data.slide_site[s])),
            "scan_year": int(data.slide_year[s]),
        }
        labels = data.label[lo:hi]
        tiles = [
            tile_row(224 * (i % cols), 224 * (i // cols), **meta, label=LABELS[int(labels[i])])
            for i in range(count)
        ]
        source = slide_source(
            source_id_of(seed, s),
            f"slide_{s:05d}.svs",
            224 * min(count, cols),
            224 * (1 + (count - 1) // cols),
        )
        got = writer.add_source(source, tiles, np.asarray(data.vectors[lo:hi], np.float32))
        ids[lo:hi] = got
        if writer.n_tiles >= commit_every:
            writer.commit()
            writer = col.writer(run_id)
            if progress is not None:
                progress(hi)
    writer.commit()
    return ids
