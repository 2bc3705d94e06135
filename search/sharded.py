"""Sharded, replicated search on a Ray cluster: shard actors and an exact fan-out/merge.

Placement. Every collection's segments are spread over ``n_shards`` shards: in commit order
(segment ids are time-ordered) each segment goes to the shard holding the fewest tiles so far,
ties broken by a hash of the segment id -- deterministic, balanced by tiles, and a new commit
never moves an older segment. Each shard runs ``replicas`` Ray actors
(:class:`search.shard.ShardWorker`, one process each, on any node that reaches the home over a
shared filesystem); a query goes to one replica per shard, round-robin, and to the next
replica when one is dead or does not answer within ``timeout_s``.

Snapshots. The coordinator lists the collection (one directory listing per query, like the
single-process service), fixes the segment list of that snapshot and sends every shard its part
of it: all shards answer on one snapshot, never a mix. A new snapshot is prepared on the shards
off the request path while the previous one keeps answering (a first one is prepared before
answering). A shard that finds a listed segment gone (retired by a compaction) makes the
coordinator list again and retry.

Exactness. A shard runs the single-machine planner on its segments and returns its top-k with
exact float32 scores; the coordinator keeps the k best by (score desc, tile id asc), the
planner's own tie rule, so for exact plans hits, scores and order equal one process's answer (the shards use
this process's FAISS/BLAS thread count: FAISS rounds differently with another one).
Group-by runs the service's fetch-until-k-groups loop here over merged candidates, and
slide-level ranking merges per-shard top-m score lists (``search.sharded_slides``). For IVF
plans each shard probes the same ``nprobe`` lists of the shared coarse quantizer (unfiltered,
the union of candidates is the single-process set); filtered, each shard probes until its own
matching candidates reach its share (its tiles x nprobe / nlist), and ``exact_below`` applies
per shard to its share, so a shard may rank exactly where one process would not (never fewer
candidates in total for the same snapshot, up to list-boundary rounding).

Failures. When every replica of a shard fails, the query raises :class:`ShardUnavailableError`
(HTTP 503, ``SHARD_UNAVAILABLE``) -- never a silently partial answer -- unless the request
asked for ``partial=True``: then the answer covers the live shards and lists the missing ones.
Ray is imported only here (lazily, when a sharded service starts).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lamina.search.errors import InvalidQueryError, ShardUnavailableError, TileNotFoundError
from lamina.search.filters import Condition
from lamina.search.results import Hit, Ranking, SearchResult, hit_from_row
from lamina.search.segment_reader import unify_types
from lamina.search.segments import RESERVED_COLUMNS, SegmentInfo
from lamina.search.service import SearchService
from lamina.search.store import Collection, Snapshot, Store
from lamina.search.views import _jsonable

NAMESPACE = "lamina"
ACTOR_PREFIX = "lamina-shard"
log = logging.getLogger(__name__)


def _gone() -> tuple[type[BaseException], ...]:
    """Ray errors meaning "this replica did not answer" (dead, restarting, lost, too slow)."""
    from ray import exceptions as rx

    return (
        rx.RayActorError,
        rx.GetTimeoutError,
        rx.WorkerCrashedError,
        rx.NodeDiedError,
        rx.ObjectLostError,
    )


def assign_segments(segments: Sequence[SegmentInfo], n_shards: int) -> list[list[str]]:
    """Segment ids per shard (see the module doc: least-loaded in commit order)."""
    load = [0] * n_shards
    out: list[list[str]] = [[] for _ in range(n_shards)]
    for s in sorted(segments, key=lambda s: s.segment_id):
        h = int(hashlib.sha256(s.segment_id.encode()).hexdigest()[:8], 16)
        shard = min(range(n_shards), key=lambda i: (load[i], (i - h) % n_shards))
        load[shard] += s.n_tiles
        out[shard].append(s.segment_id)
    return out


class ClusterView:
    """One collection at one snapshot as the shards hold it: the coordinator's routing table,
    schema and lookups (tile rows and vectors are fetched from the shard that holds them)."""

    def __init__(
        self,
        service: ShardedSearchService,
        collection: Collection,
        key: tuple[Any, ...],
        assignment: list[list[str]],
        schema: dict[str, str],
        missing_segments: list[str],
        has_ann: bool,
    ) -> None:
        self.service = service
        self.collection = collection
        self.key = key
        self.snapshot: Snapshot = key[3]
        self.assignment = assignment
        self.schema = schema
        self.metadata_columns = [c for c in schema if c not in RESERVED_COLUMNS]
        self.missing_segments = missing_segments
        self.has_ann = has_ann
        self.n_tiles = self.snapshot.n_tiles
        self.segment_index = {s.segment_id: i for i, s in enumerate(self.snapshot.segments)}

    def args(self, shard: int) -> tuple[Any, ...]:
        """The leading arguments of every shard call: what to answer on."""
        return (
            self.collection.name,
            self.snapshot.id,
            self.assignment[shard],
            self.key[1:3],
            self.schema,
        )

    def metadata_of(self, row: dict[str, Any]) -> dict[str, Any]:
        return {c: _jsonable(row.get(c)) for c in self.metadata_columns}

    def _lookup(self, tile_ids: Sequence[int], vectors: bool) -> dict[int, Any]:
        ids = [int(t) for t in tile_ids]
        found, _ = self.service.fan(self, "tiles", lambda i: (ids, vectors))
        out: dict[int, Any] = {}
        for part in found.values():
            out.update(part)
        return out

    def tile_rows(self, tile_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        return {t: row for t, (row, _) in self._lookup(tile_ids, False).items()}

    def tile(self, tile_id: int) -> dict[str, Any]:
        rows = self.tile_rows([int(tile_id)])
        if int(tile_id) not in rows:
            raise self._not_found(int(tile_id))
        return rows[int(tile_id)]

    def tile_vectors(self, tile_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = [int(t) for t in tile_ids]
        found = self._lookup(ids, True)
        for t in ids:
            if t not in found:
                raise self._not_found(t)
        return np.stack([found[t][1] for t in ids]).astype(np.float32)

    def _not_found(self, tile_id: int) -> TileNotFoundError:
        missing = self.missing_segments
        return TileNotFoundError(
            f"tile {tile_id} is not in collection {self.collection.name!r} "
            f"(snapshot {self.snapshot.id}"
            + (f"; damaged segments not answering: {', '.join(missing)})" if missing else ")")
        )

    def distinct_values(self, column: str) -> frozenset[Any]:
        """The distinct non-null values of ``column`` over every shard."""
        from lamina.search.filters import quote_ident

        col = quote_ident(column)
        rows = self.sql(f"SELECT DISTINCT {col} AS v FROM tiles WHERE {col} IS NOT NULL")
        return frozenset(row["v"] for row in rows)

    def group_counts(
        self,
        column: str,
        conds: Sequence[Condition],
        tile_ids: Sequence[int],
        values: Sequence[Any],
    ) -> list[int]:
        """For each value: the tiles matching ``conds`` with that value of ``column``, counted
        on every shard and summed (as :meth:`search.views.CollectionView.group_counts`)."""
        from lamina.search.filters import compile_conditions, quote_ident

        wanted = [v for v in values if v is not None]
        if not wanted:
            return [0 for _ in values]
        where, params = compile_conditions(conds, self.schema)
        col = quote_ident(column)
        marks = ", ".join("?" for _ in wanted)
        query = (
            f"SELECT {col} AS v, count(*) AS n FROM tiles WHERE ({where}) AND {col} IN ({marks}) "
            "GROUP BY 1"
        )
        total: dict[Any, int] = {}
        for row in self.sql(query, [*params, *wanted]):
            v = _jsonable(row["v"])
            total[v] = total.get(v, 0) + int(row["n"])
        return [total.get(v, 0) for v in values]

    def sql(self, query: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """A row lookup on every shard, rows concatenated in shard order (not for aggregates)."""
        found, _ = self.service.fan(self, "sources", lambda i: (query, list(params or [])))
        return [row for i in sorted(found) for row in found[i]]


class _Shard:
    """The replicas of one shard and the round-robin over them."""

    def __init__(self, actors: list[Any]) -> None:
        self.actors = actors
        self._next = itertools.count()

    def order(self) -> list[int]:
        start = next(self._next) % len(self.actors)
        return [(start + j) % len(self.actors) for j in range(len(self.actors))]


class ShardedSearchService(SearchService):
    """The search service with each collection spread over shard actors (module doc)."""

    def __init__(
        self,
        store: Store,
        address: str | None,
        shards: int = 2,
        replicas: int = 1,
        *,
        cpus_per_shard: float = 1.0,
        timeout_s: float = 30.0,
        tag: str | None = None,
    ) -> None:
        super().__init__(store, background=True)
        if not 1 <= shards <= 256 or not 1 <= replicas <= 16:
            raise InvalidQueryError("shards must be 1..256 and replicas 1..16")
        import ray

        if not ray.is_initialized():
            ray.init(
                address=address,
                namespace=NAMESPACE,
                logging_level=logging.ERROR,
                log_to_driver=False,
            )
        self.tag = tag or uuid.uuid4().hex[:8]
        self.timeout_s = timeout_s
        import faiss

        from lamina.search.shard import ShardWorker

        remote = ray.remote(ShardWorker)
        home = str(store.home.resolve())
        threads = faiss.omp_get_max_threads()  # the shards score as this process would
        env = {v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        self.shards: list[_Shard] = []
        for i in range(shards):
            actors = [
                remote.options(  # type: ignore[attr-defined]
                    name=f"{ACTOR_PREFIX}-{self.tag}-{i}-{r}",
                    namespace=NAMESPACE,
                    num_cpus=cpus_per_shard,
                    max_restarts=-1,
                    max_task_retries=0,
                    max_concurrency=8,
                    scheduling_strategy="SPREAD",
                    runtime_env={"env_vars": env},
                ).remote(home, i, r, threads)
                for r in range(replicas)
            ]
            self.shards.append(_Shard(actors))
        ray.get([a.ping.remote() for s in self.shards for a in s.actors], timeout=120)
        self._cviews: dict[str, ClusterView] = {}
        self._cv_lock = threading.Lock()
        self._preparing: set[str] = set()

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    # -- fan-out ------------------------------------------------------------------------------
    def _call(self, shard: int, method: str, args: tuple[Any, ...], skip: int | None = None) -> Any:
        """One shard's answer from the first replica (round-robin; not ``skip``, the one that
        just failed) that gives one; raises ShardUnavailableError when none does. Errors
        raised by the shard code propagate."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        last = f"replica {skip} failed" if skip is not None else ""
        for r in self.shards[shard].order():
            if r == skip:
                continue
            actor = self.shards[shard].actors[r]
            try:
                return ray.get(actor.call.remote(method, args), timeout=self.timeout_s)
            except RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, RayActorError):
                    last = f"replica {r} died"
                    continue
                raise cause from None
            except _gone() as exc:
                last = f"replica {r}: {type(exc).__name__}"
                continue
        raise ShardUnavailableError(f"shard {shard} is unavailable ({last})", [shard])

    def fan(
        self,
        view: ClusterView,
        method: str,
        extra: Callable[[int], tuple[Any, ...]],
        partial: bool = False,
        shards: Sequence[int] | None = None,
    ) -> tuple[dict[int, Any], list[int]]:
        """Call ``method(*view.args(i), *extra(i))`` on every shard at once; ({shard: answer},
        missing shards). A missing shard raises ShardUnavailableError unless ``partial``."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        targets = list(range(self.n_shards)) if shards is None else list(shards)
        pending: dict[int, tuple[int, Any]] = {}
        for i in targets:
            r = self.shards[i].order()[0]
            actor = self.shards[i].actors[r]
            pending[i] = (r, actor.call.remote(method, (*view.args(i), *extra(i))))
        deadline = time.monotonic() + self.timeout_s
        try:  # the usual case: every shard answers
            values = ray.get([ref for _, ref in pending.values()], timeout=self.timeout_s)
            return dict(zip(pending, values, strict=True)), []
        except (RayTaskError, *_gone()):  # type: ignore[misc]
            pass  # sorted out shard by shard below (answers already in are not asked again)
        out: dict[int, Any] = {}
        missing: list[int] = []
        for i, (r, ref) in pending.items():
            try:
                out[i] = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
                continue
            except RayTaskError as exc:
                if not isinstance(exc.cause, RayActorError):
                    raise exc.cause from None
            except _gone():
                pass
            try:  # the other replicas, one after the other
                out[i] = self._call(i, method, (*view.args(i), *extra(i)), skip=r)
            except ShardUnavailableError:
                missing.append(i)
        if missing and not partial:
            raise ShardUnavailableError(
                f"shard(s) {', '.join(map(str, missing))} of {self.n_shards} unavailable: "
                "no replica answered; retry, or ask for a partial answer (partial=true)",
                missing,
            )
        return out, missing

    # -- views --------------------------------------------------------------------------------
    def view(self, name: str, wait: bool | None = None) -> ClusterView:  # type: ignore[override]
        col = self.store.collection(name)
        key = self._key(col)
        with self._cv_lock:
            current = self._cviews.get(name)
        if current is not None and current.key[:3] == key[:3]:
            return current
        if current is None or wait:
            return self._prepare(name, col, key)
        with self._cv_lock:
            start = name not in self._preparing
            self._preparing.add(name)
        if start:
            threading.Thread(target=self._prepare_bg, args=(name, col, key), daemon=True).start()
        return current

    def _prepare_bg(self, name: str, col: Collection, key: tuple[Any, ...]) -> None:
        try:
            self._prepare(name, col, key)
        except Exception:  # noqa: BLE001 - the next request retries
            log.exception("preparing a new snapshot of %s on the shards failed", name)
        finally:
            with self._cv_lock:
                self._preparing.discard(name)

    def _prepare(self, name: str, col: Collection, key: tuple[Any, ...]) -> ClusterView:
        for attempt in range(3):
            assignment = assign_segments(key[3].segments, self.n_shards)
            probe = ClusterView(self, col, key, assignment, {}, [], False)
            try:
                found, _ = self.fan(probe, "prepare", lambda i: (), shards=None)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
                key = self._key(col)  # a compaction retired a listed segment: list again
        types: dict[str, list[str]] = {}
        schemas = {seg: cols for part in found.values() for seg, cols in part["schemas"].items()}
        for s in key[3].segments:
            for column, typ in schemas.get(s.segment_id, []):
                types.setdefault(column, []).append(typ)
        schema = {n: unify_types(t) for n, t in types.items()}
        if not schemas:
            from lamina.search.segment_reader import sql_type_name
            from lamina.search.segments import TILE_CORE_COLUMNS

            schema = {n: sql_type_name(t) for n, t in TILE_CORE_COLUMNS.items()}
        missing = {d for d, _ in key[3].damaged}
        for part in found.values():
            missing.update(part["missing_segments"])
        has_ann = any(part["has_ann"] for part in found.values())
        view = ClusterView(self, col, key, assignment, schema, sorted(missing), has_ann)
        with self._cv_lock:
            self._cviews[name] = view
        self._maybe_build_index(name, col, view)
        return view

    def _maybe_build_index(self, name: str, col: Collection, view: ClusterView) -> None:
        """As the single-process server does: build or extend the collection's ANN index in a
        thread when segments lack it; the next query sees the new index version."""
        from lamina.search.ann import AnnIndex, update_index
        from lamina.search.compaction import cluster

        if col.index_factory == "Flat" or view.n_tiles == 0:
            return
        ann = AnnIndex.load(col)
        if ann is not None and all(
            ann.sidecar(s.segment_id).exists() for s in view.snapshot.segments
        ):
            return
        state = self._state(name)
        with state.lock:
            if state.building:
                return
            state.building = True

        def run() -> None:
            try:
                update_index(col)
                cluster(col)
                state.build_error = None
            except Exception as exc:  # noqa: BLE001 - reported by status; searches go on exactly
                state.build_error = str(exc)
                log.warning("building the %s index of %s failed: %s", col.index_factory, name, exc)
            finally:
                state.building = False

        threading.Thread(target=run, daemon=True).start()

    # -- ranking ------------------------------------------------------------------------------
    def _rank(
        self,
        view: Any,
        q: np.ndarray,
        k: int,
        conds: list[Condition],
        params: Mapping[str, Any] | None,
        partial: bool = False,
    ) -> Ranking:
        t0 = time.perf_counter()
        found, missing = self.fan(
            view, "search", lambda i: (q, k, list(conds), params), partial=partial
        )
        hits: list[list[Hit]] = []
        for j in range(len(q)):
            parts = [found[i]["found"][j] for i in sorted(found)]
            if not parts:  # a partial answer with no shard left
                hits.append([])
                continue
            scores = np.concatenate([p[0] for p in parts]).astype(np.float32)
            ids = np.concatenate([p[1] for p in parts]).astype(np.int64)
            rows = [row for p in parts for row in p[2]]
            order = np.lexsort((ids, -scores))[:k]
            hits.append([hit_from_row(view, rows[int(o)], float(scores[o])) for o in order])
        matched = sum(int(a["matched"]) for a in found.values())
        plan = merge_plans([found[i]["plan"] for i in sorted(found)], self.n_shards)
        plan["ms"]["fanout_total"] = round((time.perf_counter() - t0) * 1000, 3)
        return Ranking(hits, plan, matched, missing)

    def _rank_slides(self, collection: str, **kwargs: Any) -> SearchResult:
        from lamina.search.sharded_slides import rank_slides_sharded

        return rank_slides_sharded(self, collection, **kwargs)

    # -- status -------------------------------------------------------------------------------
    def cluster_status(self) -> dict[str, Any]:
        return cluster_status(self.tag)

    def close(self) -> None:
        import ray

        for s in self.shards:
            for a in s.actors:
                ray.kill(a)


def merge_plans(plans: list[dict[str, Any]], n_shards: int) -> dict[str, Any]:
    """One plan for a fanned-out query: sums of counts, the slowest shard's stage times."""
    live = [p for p in plans if p]
    strategies = sorted({p.get("strategy", "exact") for p in live}) or ["exact"]
    out: dict[str, Any] = {
        "strategy": "+".join(strategies),
        "index": live[0].get("index", "Flat") if live else "Flat",
        "reason": "; ".join(sorted({p.get("reason", "") for p in live if p.get("reason")})),
        "shards": n_shards,
        "shards_answered": len(plans),
    }
    for field in ("matched", "total", "candidates", "segments_indexed", "segments_exact"):
        out[field] = sum(int(p.get(field, 0)) for p in live)
    out["selectivity"] = round(out["matched"] / out["total"], 6) if out["total"] else 0.0
    out["fallback"] = any(p.get("fallback") for p in live)
    probes = [p["nprobe"] for p in live if p.get("nprobe") is not None]
    if probes:
        out["nprobe"] = max(probes)
    ms: dict[str, float] = {}
    for p in live:
        for stage, v in (p.get("ms") or {}).items():
            ms[stage] = max(ms.get(stage, 0.0), float(v))
    out["ms"] = ms
    return out


def cluster_status(tag: str | None = None, address: str | None = None) -> dict[str, Any]:
    """Every shard replica's status (snapshot, segments, memory) found on the cluster; with
    ``tag``, only that server's. Connects to ``address`` when not connected yet."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False
        )
    names = [
        a["name"] if isinstance(a, dict) else str(a)
        for a in ray.util.list_named_actors(all_namespaces=True)
    ]
    ours = sorted(n for n in names if n.startswith(f"{ACTOR_PREFIX}-"))
    if tag is not None:
        ours = [n for n in ours if n.startswith(f"{ACTOR_PREFIX}-{tag}-")]
    replicas: list[dict[str, Any]] = []
    for name in ours:
        server, shard, replica = name[len(ACTOR_PREFIX) + 1 :].rsplit("-", 2)
        entry: dict[str, Any] = {"server": server, "shard": int(shard), "replica": int(replica)}
        try:
            actor = ray.get_actor(name, namespace=NAMESPACE)
            entry.update(ray.get(actor.info.remote(), timeout=10))
            entry["alive"] = True
        except Exception as exc:  # noqa: BLE001 - a dead or restarting replica is reported
            entry["alive"] = False
            entry["error"] = type(exc).__name__
        replicas.append(entry)
    return {"replicas": replicas, "servers": sorted({r["server"] for r in replicas})}
