"""Metadata updates without re-embedding, deletions with tombstones, erasure at compaction
(search/rewrite.py, search/compaction.py), on real PAD-UFES-20 photos and the test encoder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lamina.search import Store
from lamina.search.ann import update_index
from lamina.search.compaction import compact
from lamina.search.errors import InvalidQueryError, SourceNotFoundError, TileNotFoundError
from lamina.search.filters import parse_filters
from lamina.search.planner import search as plan_search
from lamina.search.rewrite import annotate, delete, resolve_sources
from lamina.search.service import SearchService

N_PHOTOS = 24


def _labels(derm_dir: Path) -> pd.DataFrame:
    return pd.read_csv(derm_dir / "labels.csv")


def _index(home: Path, images: Path, manifest: Path, **options: Any) -> Any:
    from lamina.encoders import create_encoder
    from lamina.indexer import IngestOptions, Manifest, ingest

    return ingest(
        Store(home),
        "derm",
        [str(images)],
        create_encoder("test/tiny-vit", allow_test=True),
        IngestOptions(progress=False, **options),
        Manifest.load(manifest, "filename"),
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, derm_dir: Path) -> Path:
    """The photos, a wrong manifest (diagnoses shuffled) and two homes indexed once: one with
    the wrong manifest, one with labels.csv. Tests work on copies (see :func:`home_of`)."""
    root = tmp_path_factory.mktemp("rewrite")
    images = root / "src" / "images"
    images.mkdir(parents=True)
    for p in sorted((derm_dir / "images").glob("*.jpg"))[:N_PHOTOS]:
        shutil.copy(p, images / p.name)
    df = _labels(derm_dir)
    rng = np.random.default_rng(7)
    df["diagnostic"] = df["diagnostic"].to_numpy()[rng.permutation(len(df))]
    df.to_csv(root / "wrong.csv", index=False)
    _index(root / "wrong-home", images, root / "wrong.csv")
    _index(root / "right-home", images, derm_dir / "labels.csv")
    return root


def home_of(base: Path, which: str, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(base / f"{which}-home", home)
    return home


@pytest.fixture()
def photos(base: Path) -> Path:
    return base / "src" / "images"


@pytest.fixture()
def wrong_manifest(base: Path) -> Path:
    return base / "wrong.csv"


def _truth(derm_dir: Path, images: Path) -> pd.DataFrame:
    df = _labels(derm_dir)
    df["name"] = df["filename"].map(lambda f: Path(f).name)
    return df[df["name"].isin({p.name for p in images.iterdir()})].set_index("name")


def _by_name(view: Any, column: str) -> dict[str, Any]:
    rows = view.sql(f'SELECT source, "{column}" AS v FROM tiles')
    return {Path(r["source"]).name: r["v"] for r in rows}


def test_annotate_corrects_a_wrong_manifest_without_touching_vectors(
    tmp_path: Path, photos: Path, wrong_manifest: Path, derm_dir: Path
) -> None:
    home = home_of(photos.parents[1], "wrong", tmp_path)
    col = Store(home).collection("derm")
    service = SearchService(Store(home))
    old_view = service.view("derm")
    [seg] = col.segments()
    vec_bytes = seg.vectors_path.read_bytes()
    inode = seg.vectors_path.stat().st_ino
    wrong = _by_name(old_view, "diagnostic")
    truth = _truth(derm_dir, photos)
    assert wrong != truth["diagnostic"].to_dict()  # the shuffle changed some labels

    updates = {}
    for sid, paths in col.committed_sources().items():
        for p in paths:
            row = truth.loc[Path(p).name].to_dict()
            updates[(sid, p)] = {**row, "filename": truth.loc[Path(p).name, "filename"]}
    result = annotate(col, updates)

    # reported per source: exactly the labels that differ, old -> new
    changed = {
        Path(c["source"]).name: c["changes"]["diagnostic"]
        for c in result["changed"]
        if "diagnostic" in c["changes"]
    }
    expected = {
        n: {"old": wrong[n], "new": truth.loc[n, "diagnostic"]}
        for n in truth.index
        if wrong[n] != truth.loc[n, "diagnostic"]
    }
    assert changed == expected and changed
    new_view = service.view("derm", wait=True)
    assert new_view.snapshot.id != old_view.snapshot.id
    # filters now match pandas on the corrected manifest, for every label
    for label, group in truth.groupby("diagnostic"):
        pos = new_view.matching_positions(parse_filters([f"diagnostic={label}"]))
        got = {Path(r["source"]).name for r in new_view.rows_at(pos)}
        assert got == set(group.index), label
    # a numeric column stays numeric (age >= 60 compares as numbers)
    pos = new_view.matching_positions(parse_filters(["age>=60"]))
    assert {Path(r["source"]).name for r in new_view.rows_at(pos)} == set(
        truth.index[truth["age"] >= 60]
    )
    # vectors: bitwise the same bytes, the same file (hard link, nothing copied)
    [new_seg] = col.segments()
    assert new_seg.segment_id != seg.segment_id
    assert new_seg.vectors_path.read_bytes() == vec_bytes
    assert new_seg.vectors_path.stat().st_ino == inode
    # the old snapshot, opened before, still answers with what it held
    assert _by_name(old_view, "diagnostic") == wrong
    q = old_view.vectors[np.array([0])]
    assert len(plan_search(old_view, q, 5)[0][0].positions) == 5
    # applying the same values again changes nothing and writes nothing
    again = annotate(col, updates)
    assert again["changed"] == [] and again["segments"] == []


def test_reindex_with_a_changed_manifest_updates_metadata(
    tmp_path: Path, photos: Path, wrong_manifest: Path, derm_dir: Path
) -> None:
    home = home_of(photos.parents[1], "wrong", tmp_path)
    vectors_before = Store(home).collection("derm").segments()[0].vectors_path.read_bytes()
    report = _index(home, photos, derm_dir / "labels.csv")
    assert report.indexed == 0 and report.unchanged == N_PHOTOS
    truth = _truth(derm_dir, photos)
    view = SearchService(Store(home)).view("derm")
    assert _by_name(view, "diagnostic") == truth["diagnostic"].to_dict()
    assert {Path(u["source"]).name for u in report.updated} >= {
        n for n, c in _by_name(view, "diagnostic").items() if c != truth.loc[n, "diagnostic"]
    }
    assert all("diagnostic" in u["changes"] for u in report.updated)
    [seg] = Store(home).collection("derm").segments()
    assert seg.vectors_path.read_bytes() == vectors_before


def _victim(truth: pd.DataFrame) -> str:
    """A photo whose patient id and file stem occur in no other indexed row's text."""
    text = " ".join(f"{n} {r.patient_id} {r.img_id} {r.filename}" for n, r in truth.iterrows())
    for name, row in truth.iterrows():
        stem = Path(str(name)).stem
        # its own row names the patient 4 times (name, id, img_id, file), the stem 3 times
        if text.count(str(row["patient_id"])) == 4 and text.count(stem) == 3:
            return str(name)
    raise AssertionError("no photo with a unique patient id")


def _files(home: Path) -> list[Path]:
    return [Path(r) / f for r, _, fs in os.walk(home) for f in fs]


@pytest.mark.parametrize("factory", ["IVF4", "IVF2,SQ8", "HNSW8"])
def test_delete_hides_at_once_and_compaction_erases(
    tmp_path: Path, photos: Path, derm_dir: Path, factory: str
) -> None:
    """IVF lists (our own), a FAISS IVF code index (preassigned lists, bitmap) and HNSW (a
    graph holding vector copies): the deleted tile is never a hit nor counted, and after
    compaction with erase no index file holds it either."""
    home = home_of(photos.parents[1], "right", tmp_path)
    col = Store(home).collection("derm")
    col.set_index(factory)
    assert update_index(col).get("trained")
    service = SearchService(Store(home))
    view = service.view("derm")
    truth = _truth(derm_dir, photos)
    victim = _victim(truth)
    pos = view.matching_positions(parse_filters([f"img_id={truth.loc[victim, 'img_id']}"]))
    [tile_id] = view.tile_ids_at(pos).tolist()
    vec = view.vectors[pos][0]
    # before: the victim is its own best hit, exactly and through the IVF lists
    for strategy in ("exact", "ann"):
        ranked, _ = plan_search(view, vec[None, :], 3, params={"strategy": strategy})
        assert int(view.tile_ids_at(ranked[0].positions)[0]) == tile_id
    with pytest.raises(SourceNotFoundError):
        resolve_sources(view, ["no-such.jpg"], [])
    with pytest.raises(InvalidQueryError):
        resolve_sources(view, [], parse_filters(["tissue_fraction>0"]))
    result = delete(col, resolve_sources(view, [victim], []))
    assert [Path(d["source"]).name for d in result["deleted"]] == [victim]

    after = service.view("derm", wait=True)
    assert after.has_deletions and after.n_live == N_PHOTOS - 1
    for strategy in ("exact", "ann"):
        for conds in ([], parse_filters([f"diagnostic={truth.loc[victim, 'diagnostic']}"])):
            ranked, plan = plan_search(
                after, vec[None, :], N_PHOTOS, conds, params={"strategy": strategy}
            )
            assert tile_id not in after.tile_ids_at(ranked[0].positions).tolist()
            # the rewritten segment kept its index part (linked), so ANN really ran on it
            assert plan.segments_indexed == (1 if strategy == "ann" else 0), plan
            assert plan.matched == (
                N_PHOTOS - 1
                if not conds
                else int((truth["diagnostic"] == truth.loc[victim, "diagnostic"]).sum())
                - 1  # fmt: skip
            )
    with pytest.raises(TileNotFoundError, match="was deleted"):
        after.positions_of([tile_id])
    assert victim not in {Path(r["source"]).name for r in after.sql("SELECT source FROM tiles")}
    assert after.sql("SELECT count(*) AS n FROM tiles")[0]["n"] == N_PHOTOS - 1
    # the view opened before the deletion still finds it (its snapshot holds it)
    assert int(view.positions_of([tile_id])[0]) >= 0

    summary = compact(col, erase=True)
    assert summary["erased_tiles"] == 1
    final = service.view("derm", wait=True)
    assert not final.has_deletions and final.n_tiles == N_PHOTOS - 1
    ranked, plan = plan_search(final, vec[None, :], 3, params={"strategy": "ann"})
    assert tile_id not in final.tile_ids_at(ranked[0].positions).tolist()
    assert plan.segments_indexed == 1
    # nothing under the home holds the deleted vector or its metadata strings
    needles = [
        vec.astype("<f4").tobytes(),
        vec.astype("<f2").tobytes(),
        Path(victim).stem.encode(),
        str(truth.loc[victim, "patient_id"]).encode(),
    ]
    files = _files(home)
    index_files = {".npy"} if factory == "IVF4" else {".faiss"}
    assert {".parquet", ".f32", ".json"} | index_files <= {f.suffix for f in files}
    for f in files:
        data = f.read_bytes()
        for needle in needles:
            assert needle not in data, (f, needle[:16])


def test_tombstones_survive_other_rewrites(tmp_path: Path, photos: Path, derm_dir: Path) -> None:
    """A deletion followed by an annotate and a merge never brings a deleted row back."""
    home = tmp_path / "home"
    _index(home, photos, derm_dir / "labels.csv", commit_sources=N_PHOTOS // 2)
    col = Store(home).collection("derm")
    assert len(col.segments()) == 2
    service = SearchService(Store(home))
    view = service.view("derm")
    names = sorted(p.name for p in photos.iterdir())
    gone = [names[0], names[-1]]  # one in each segment
    delete(col, resolve_sources(view, gone, []))
    first = next(iter(col.committed_sources().items()))
    annotate(col, {(first[0], first[1][0]): {"diagnostic": "XYZ"}})
    view = service.view("derm", wait=True)
    assert view.n_live == N_PHOTOS - 2
    compact(col, min_segments=2)
    view = service.view("derm", wait=True)
    assert view.n_tiles == view.n_live == N_PHOTOS - 2 and not view.has_deletions
    got = {Path(r["source"]).name for r in view.sql("SELECT source FROM tiles")}
    assert got == set(names) - set(gone)
    assert view.sql("SELECT count(*) AS n FROM tiles WHERE diagnostic = 'XYZ'")[0]["n"] == 1


def test_deleting_every_source_of_a_segment_retires_it(
    tmp_path: Path, photos: Path, derm_dir: Path
) -> None:
    home = home_of(photos.parents[1], "right", tmp_path)
    col = Store(home).collection("derm")
    service = SearchService(Store(home))
    view = service.view("derm")
    names = sorted(p.name for p in photos.iterdir())
    result = delete(col, resolve_sources(view, names, []))
    assert len(result["deleted"]) == N_PHOTOS and result["segments"] == []
    assert col.segments() == [] and service.view("derm", wait=True).n_tiles == 0
    compact(col, erase=True)
    assert not [e for e in os.listdir(col.segments_dir) if e.startswith(".retired-")]


def test_a_slide_is_annotated_and_erased_whole(tmp_path: Path, make_slide: Any) -> None:
    """Two synthetic slides: a label change reaches every tile of its slide; deleting the
    other slide and compacting with erase leaves none of its tile vectors or names on disk."""
    from lamina.encoders import create_encoder
    from lamina.indexer import IngestOptions, Manifest, ingest

    a = make_slide("case-a.tiff", tissue=[(2, 3, 6, 7)], folder="rewrite")
    make_slide("case-b.tiff", tissue=[(1, 1, 7, 5), (9, 2, 12, 6)], seed=1, folder="rewrite")
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,case_id,label\ncase-a.tiff,CASE-ALPHA-77,tumour\n"
                        "case-b.tiff,CASE-BRAVO-88,normal\n")  # fmt: skip
    home = tmp_path / "home"
    options = IngestOptions(tile_px=64, mpp=0.5, batch_size=16, progress=False)
    encoder = create_encoder("test/tiny-vit", device="cpu")
    ingest(Store(home), "syn", [a.parent], encoder, options, Manifest.load(manifest))
    col = Store(home).collection("syn")
    service = SearchService(Store(home))
    view = service.view("syn")
    counts = {r["source"]: r["n"] for r in view.sql(
        "SELECT source, count(*) AS n FROM tiles GROUP BY source")}  # fmt: skip
    by_name = {Path(p).name: (p, n) for p, n in counts.items()}
    assert by_name["case-a.tiff"][1] > 1 and by_name["case-b.tiff"][1] > 1
    sid_a = view.sql("SELECT source_id FROM sources WHERE source = ?", [by_name["case-a.tiff"][0]])

    done = annotate(col, {(sid_a[0]["source_id"], by_name["case-a.tiff"][0]): {"label": "normal"}})
    assert [Path(c["source"]).name for c in done["changed"]] == ["case-a.tiff"]
    assert done["changed"][0]["changes"] == {"label": {"old": "tumour", "new": "normal"}}
    view = service.view("syn", wait=True)
    rows = view.sql("SELECT label, count(*) AS n FROM tiles GROUP BY label")
    assert rows == [{"label": "normal", "n": sum(counts.values())}]

    b_pos = view.matching_positions(parse_filters(["case_id=CASE-BRAVO-88"]))
    b_vectors = view.vectors[b_pos]
    assert len(b_pos) == by_name["case-b.tiff"][1]
    delete(col, resolve_sources(view, [], parse_filters(["case_id=CASE-BRAVO-88"])))
    view = service.view("syn", wait=True)
    assert view.n_live == by_name["case-a.tiff"][1]
    assert compact(col, erase=True)["erased_tiles"] == len(b_pos)
    needles = [v.astype("<f4").tobytes() for v in b_vectors]
    needles += [v.astype("<f2").tobytes() for v in b_vectors]
    needles += [b"CASE-BRAVO-88", b"case-b"]
    for f in _files(home):
        data = f.read_bytes()
        assert not any(n in data for n in needles), f
