"""Chaos harness: random SIGKILLs during every operation that writes to a Lamina home.

    python -m bench.chaos [--kills 100] [--seed 13] [--out bench/results/chaos.json]

Method. Six operations, each a real ``lamina`` process on a copy of a prepared home: photo
ingest (24 PAD-UFES-20 photos, a commit every 4), slide ingest (3 slides, a commit per slide),
``lamina import`` (4 .npz files of seeded 32-d vectors), ``lamina compact`` (24 one-photo
segments), ``lamina collection build`` (an IVF4 index over them) and ``lamina cohort create``.
Each is first run once uninterrupted: that run is the reference and its wall time T. Kill ``i``
takes operation ``i mod 6``, starts it on a fresh copy of the operation's starting home, sends
SIGKILL after a delay drawn uniformly from [0.85 F, T] by ``random.Random(seed)``, where F is
when the reference run first made something durable (a segment, an index file, the catalog) --
so kills land around the commits, not in interpreter start-up; a run is reproducible up to the
machine's timing. It then runs the same command to completion in this
process and checks the home against the reference:

- every tile of the reference is present exactly once (key: source, kind, x, y, level) with a
  bitwise-equal vector, no other tile is, and no tile id appears twice (``lost``,
  ``duplicated``, ``mismatched_vectors``);
- searches (the first 4 reference vectors as queries, k = min(n, 30), the collection's default
  plan) return the same tiles with the same scores, to 1e-5 (``mismatched_answers``);
- every cohort version in the catalog has as many members as it says, all of them live tiles,
  and the latest one equals the reference's (``inconsistent_cohorts``);
- no temporary segment directory or index build directory is left (``leftovers``).

A process that finished before its kill is not counted as a kill; the next delay is shorter.
Results (kills per operation, how many landed after the operation had committed something, the
failure counts above, seconds) are written as JSON. ``tests/chaos/test_chaos.py`` runs 30 kills.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LAMINA_SHARED_DATA") or REPO.parent / "shared" / "data")
OPS = ("photos", "slides", "import", "compact", "build", "cohort")
N_PHOTOS = 24
BASE_ENV = {"LAMINA_COMPACT_SEGMENTS": "1000"}  # no automatic compaction: `compact` is its own op


@dataclass(frozen=True)
class Op:
    name: str
    collection: str
    base: str  # the starting home (a template under <root>/bases)
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Reference:
    home: Path
    seconds: float
    first_change: float  # seconds until the run first made something durable
    tiles: dict[tuple[Any, ...], bytes]
    answers: list[list[tuple[tuple[Any, ...], float]]]
    cohort: list[tuple[Any, ...]] | None


@dataclass
class Tally:
    kills: int = 0
    after_commit: int = 0
    finished_before_kill: int = 0
    lost: int = 0
    duplicated: int = 0
    mismatched_vectors: int = 0
    mismatched_answers: int = 0
    inconsistent_cohorts: int = 0
    leftovers: int = 0
    problems: list[str] = field(default_factory=list)


class ChaosError(RuntimeError):
    """A run that should have completed did not."""


# -- data and starting homes ----------------------------------------------------------------------
def _data(root: Path) -> dict[str, Path]:
    photos, slides, emb = root / "data" / "photos", root / "data" / "slides", root / "data" / "emb"
    for d in (photos, slides, emb):
        d.mkdir(parents=True, exist_ok=True)
    images = sorted((SHARED / "derm" / "pad_ufes20_subset" / "images").glob("*.jpg"))
    slide = SHARED / "slides" / "CMU-1-Small-Region.svs"
    if len(images) < N_PHOTOS or not slide.is_file():
        raise ChaosError(f"test data missing under {SHARED} (PAD-UFES-20 photos, CMU-1 slide)")
    for p in images[:N_PHOTOS]:
        shutil.copy(p, photos / p.name)
    for name in ("a", "b", "c"):
        shutil.copy(slide, slides / f"{name}.svs")
    rng = np.random.default_rng(13)
    for f in range(4):
        n_src, per = 4, 16
        vectors = rng.standard_normal((n_src * per, 32)).astype(np.float32)
        source = np.repeat([f"case{f}-{s}" for s in range(n_src)], per)
        x = np.tile(np.arange(per) * 224, n_src)
        np.savez(emb / f"part{f}.npz", vectors=vectors, source=source, x=x, y=np.zeros_like(x))
    return {"photos": photos, "slides": slides, "emb": emb}


def operations(data: dict[str, Path]) -> dict[str, Op]:
    q = ("--no-progress", "--json")
    return {
        "photos": Op("photos", "photos", "empty",
                     ("index", str(data["photos"]), "--collection", "photos", *q),
                     {"LAMINA_COMMIT_EVERY_SOURCES": "4"}),
        "slides": Op("slides", "slides", "empty",
                     ("index", str(data["slides"]), "--collection", "slides", "--mpp", "1.0", *q),
                     {"LAMINA_COMMIT_EVERY_SOURCES": "1"}),
        "import": Op("import", "emb", "empty",
                     ("import", str(data["emb"]), "--collection", "emb",
                      "--encoder-name", "external/chaos", "--dim", "32", *q)),
        "compact": Op("compact", "photos", "segments",
                      ("compact", "--collection", "photos", *q)),
        "build": Op("build", "photos", "ivf", ("collection", "build", "photos", *q)),
        "cohort": Op("cohort", "photos", "segments",
                     ("cohort", "create", "chaos", "--collection", "photos",
                      "--near-tile", "5", "--k", "8", "--json")),
    }  # fmt: skip


def run_inprocess(home: Path, args: tuple[str, ...], env: dict[str, str]) -> str:
    """Run a ``lamina`` command in this process (no interpreter start-up); its stdout."""
    from lamina.api.cli import cli

    saved = {k: os.environ.get(k) for k in {**BASE_ENV, **env}}
    os.environ.update({**BASE_ENV, **env})
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main(["--home", str(home), *args], prog_name="lamina", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if code != 0:
        raise ChaosError(f"lamina {' '.join(args[:2])} exited {code}: {err.getvalue()[-1500:]}")
    return out.getvalue()


def _bases(root: Path, data: dict[str, Path]) -> None:
    bases = root / "bases"
    (bases / "empty").mkdir(parents=True, exist_ok=True)
    seg = bases / "segments"
    if not seg.exists():
        run_inprocess(seg, ("index", str(data["photos"]), "--collection", "photos",
                            "--no-progress"), {"LAMINA_COMMIT_EVERY_SOURCES": "1"})  # fmt: skip
    ivf = bases / "ivf"
    if not ivf.exists():
        shutil.copytree(seg, ivf)
        run_inprocess(ivf, ("collection", "set", "photos", "--index-factory", "IVF4"), {})


def _start(home: Path, op: Op) -> subprocess.Popen[bytes]:
    """The operation as a real ``lamina`` process; its stderr goes to ``<home>.log``."""
    env = {**os.environ, **BASE_ENV, **op.env}
    cmd = [sys.executable, "-m", "lamina.api", "--home", str(home), *op.args]
    with open(home.with_name(home.name + ".log"), "wb") as err:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)


# -- what a home holds ----------------------------------------------------------------------------
def contents(home: Path, collection: str) -> tuple[dict[tuple[Any, ...], bytes], dict[int, Any]]:
    """(tile key -> vector bytes, tile id -> key) over the visible segments; raises on a
    duplicate key or id (counted by the caller)."""
    import pyarrow.parquet as pq

    from lamina.search import Store

    col = Store(home).collection(collection)
    tiles: dict[tuple[Any, ...], bytes] = {}
    ids: dict[int, Any] = {}
    dups = 0
    for seg in col.segments():
        vecs = np.asarray(seg.vectors())
        cols = ["tile_id", "source", "kind", "x", "y", "level", "row"]
        for r in pq.read_table(seg.tiles_path, columns=cols).to_pylist():
            key = (r["source"], r["kind"], r["x"], r["y"], r["level"])
            dups += key in tiles or r["tile_id"] in ids
            tiles[key] = vecs[r["row"]].tobytes()
            ids[r["tile_id"]] = key
    if dups:
        raise _Duplicates(dups, tiles, ids)
    return tiles, ids


class _Duplicates(Exception):
    def __init__(self, n: int, tiles: dict[tuple[Any, ...], bytes], ids: dict[int, Any]):
        super().__init__(f"{n} duplicate tiles")
        self.n, self.tiles, self.ids = n, tiles, ids


def answers(
    home: Path, collection: str, queries: np.ndarray, ids: dict[int, Any]
) -> list[list[tuple[tuple[Any, ...], float]]]:
    from lamina.search import SearchService, Store

    svc = SearchService(Store(home))
    k = min(len(ids), 30)
    out = []
    for res in svc.search_batch(collection, queries, k):
        hits = [(ids.get(h.tile_id, ("?", h.tile_id)), float(h.score)) for h in res.hits]
        out.append(sorted(hits, key=lambda kv: (-round(kv[1], 4), str(kv[0]))))
    return out


def cohort_state(home: Path, collection: str, ids: dict[int, Any]) -> tuple[list[Any], int]:
    """(member keys of the latest version of cohort ``chaos``, inconsistent versions)."""
    from lamina.search.catalog import Catalog
    from lamina.search.errors import CohortNotFoundError

    bad = 0
    with Catalog(home) as catalog:
        try:
            latest = catalog.cohort("chaos")
        except CohortNotFoundError:
            return [], 0
        for v in latest["versions"]:
            rec = catalog.cohort("chaos", v)
            members, _ = catalog.member_arrays("chaos", v)
            if len(members) != rec["n_tiles"] or any(int(t) not in ids for t in members):
                bad += 1
        members, _ = catalog.member_arrays("chaos", latest["version"])
    return sorted(ids[int(t)] for t in members if int(t) in ids), bad


def leftovers(home: Path, collection: str) -> list[str]:
    col = home / "collections" / collection
    out = []
    for sub, prefix in (("segments", ".tmp-"), ("index", ".build-")):
        d = col / sub
        if d.is_dir():
            out += [f"{sub}/{e}" for e in os.listdir(d) if e.startswith(prefix)]
    return out


# -- the harness ------------------------------------------------------------------------------
def reference(root: Path, op: Op) -> Reference:
    home = root / "refs" / op.name
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(root / "bases" / op.base, home)
    t0 = time.perf_counter()
    proc = _start(home, op)
    first = None
    while proc.poll() is None:  # when does the run first make something durable?
        if first is None and _committed(home, root / "bases" / op.base, op):
            first = time.perf_counter() - t0
        time.sleep(0.005)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        err = home.with_name(home.name + ".log").read_text(errors="replace")[-1500:]
        raise ChaosError(f"reference run of {op.name} failed: {err}")
    tiles, ids = contents(home, op.collection)
    queries = np.stack([np.frombuffer(tiles[k], np.float32) for k in sorted(tiles)[:4]])
    cohort = cohort_state(home, op.collection, ids)[0] if op.name == "cohort" else None
    got = answers(home, op.collection, queries, ids)
    return Reference(home, seconds, first or seconds / 2, tiles, got, cohort)


def check(home: Path, op: Op, ref: Reference, tally: Tally) -> None:
    try:
        tiles, ids = contents(home, op.collection)
    except _Duplicates as dup:
        tally.duplicated += dup.n
        tiles, ids = dup.tiles, dup.ids
    lost = set(ref.tiles) - set(tiles)
    extra = set(tiles) - set(ref.tiles)
    tally.lost += len(lost)
    tally.duplicated += len(extra)
    wrong = [k for k in set(tiles) & set(ref.tiles) if tiles[k] != ref.tiles[k]]
    tally.mismatched_vectors += len(wrong)
    queries = np.stack([np.frombuffer(ref.tiles[k], np.float32) for k in sorted(ref.tiles)[:4]])
    got = answers(home, op.collection, queries, ids)
    for a, b in zip(got, ref.answers, strict=True):
        same = [k for k, _ in a] == [k for k, _ in b] and all(
            abs(x - y) <= 1e-5 for (_, x), (_, y) in zip(a, b, strict=True)
        )
        tally.mismatched_answers += not same
    if op.name == "cohort":
        members, bad = cohort_state(home, op.collection, ids)
        tally.inconsistent_cohorts += bad + (members != ref.cohort)
    left = leftovers(home, op.collection)
    tally.leftovers += len(left)
    if lost or extra or wrong or left:
        tally.problems.append(
            f"{home.name}: lost {len(lost)}, extra {len(extra)}, wrong {len(wrong)}, "
            f"left {left[:3]}"
        )


def _committed(home: Path, base: Path, op: Op) -> bool:
    """Whether the killed run had made something durable (segments, index, catalog)."""

    def entries(h: Path) -> set[str]:
        col = h / "collections" / op.collection
        out = set()
        for sub in ("segments", "index"):
            if (col / sub).is_dir():
                out |= {f"{sub}/{e}" for e in os.listdir(col / sub) if not e.startswith(".")}
        out |= {p.relative_to(h).as_posix() for p in h.glob("catalog/cohorts/*/v*.parquet")}
        return out

    return bool(entries(home) - entries(base))


def run(
    kills: int = 100,
    seed: int = 13,
    root: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Deliver ``kills`` SIGKILLs (round robin over the operations); returns the summary."""
    import tempfile

    t0 = time.perf_counter()
    owned = root is None
    root = Path(tempfile.mkdtemp(prefix="lamina-chaos-")) if root is None else root
    try:
        data = _data(root)
        ops = operations(data)
        _bases(root, data)
        refs = {name: reference(root, op) for name, op in ops.items()}
        log("references: " + ", ".join(f"{n} {r.seconds:.1f}s" for n, r in refs.items()))
        rng = random.Random(seed)
        tallies = {name: Tally() for name in OPS}
        scale = dict.fromkeys(OPS, 1.0)
        i = attempts = 0
        while i < kills:
            attempts += 1
            if attempts > kills * 4:
                raise ChaosError("too many runs finished before their kill")
            op = ops[OPS[i % len(OPS)]]
            tally, ref = tallies[op.name], refs[op.name]
            home = root / "runs" / f"{op.name}-{attempts}"
            shutil.copytree(root / "bases" / op.base, home)
            # from well before the first commit to the end of the run
            delay = rng.uniform(0.85 * ref.first_change, ref.seconds) * scale[op.name]
            proc = _start(home, op)
            time.sleep(delay)
            if proc.poll() is not None:
                tally.finished_before_kill += 1
                scale[op.name] *= 0.8
                shutil.rmtree(home, ignore_errors=True)
                continue
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            tally.kills += 1
            tally.after_commit += _committed(home, root / "bases" / op.base, op)
            run_inprocess(home, op.args, op.env)
            check(home, op, ref, tally)
            log(f"kill {i + 1}/{kills}: {op.name} after {delay:.2f}s")
            shutil.rmtree(home, ignore_errors=True)
            i += 1
        total = {
            k: sum(getattr(t, k) for t in tallies.values())
            for k in ("lost", "duplicated", "mismatched_vectors", "mismatched_answers",
                      "inconsistent_cohorts", "leftovers")
        }  # fmt: skip
        return {
            "kills": sum(t.kills for t in tallies.values()),
            "seed": seed,
            "per_operation": {
                n: {
                    "kills": t.kills,
                    "after_commit": t.after_commit,
                    "finished_before_kill": t.finished_before_kill,
                    "reference_seconds": round(refs[n].seconds, 2),
                }
                for n, t in tallies.items()
            },
            **total,
            "problems": [p for t in tallies.values() for p in t.problems][:20],
            "seconds": round(time.perf_counter() - t0, 1),
        }
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "chaos.json")
    args = parser.parse_args()
    summary = run(args.kills, args.seed, log=lambda s: print(s, flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_operation"}, indent=2))
    bad = sum(summary[k] for k in ("lost", "duplicated", "mismatched_vectors",
                                   "mismatched_answers", "inconsistent_cohorts", "leftovers"))  # fmt: skip
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
