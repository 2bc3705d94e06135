"""Ingest spread over a Ray cluster: ``lamina index ... --cluster ADDRESS``.

Method. The driver (the ``lamina index`` process) does what a local run does around the
embedding: it holds the collection's ingest lock, discovers the files, joins the manifest, knows
which sources are already committed, writes every segment and the one run record. The work in
between runs on the cluster:

- one CPU **task** per slide (and one per chunk of ``photos_per_task`` photos) opens the file,
  hashes it (the source id), finds tissue, plans and reads the tiles with the same code as a
  local run (``prepare_slide`` / ``prepare_photo``) and hands the tiles, in the same batches as a
  local run (``encoder_batches``), to an encoder actor, preferring one on its own node;
- **encoder actors** load the model once each and embed batches; with GPUs in the cluster each
  takes ``min(1, GPUs / encoders)`` of a GPU (two actors can share one), else one CPU.

A task returns its sources' rows and (n, dim) float32 vectors; the driver adds them to the
segment being written and commits with the store's protocol (temporary directory, fsync, one
atomic rename; tile ids allocated under the collection's ids lock). Only the driver writes the
home, so the commit protocol, the tile-id allocation and the "already committed source" skip
are exactly those of a local run, and workers need read access to the source files only.

Invariants. A source becomes visible once, when the driver commits the segment holding it. A
task whose worker or node dies (or whose encoder actor dies under it) is re-run by Ray (up to
``task_retries`` times, the actor restarted on another node); what it had read or embedded is
simply lost, and a retried task's result is the only one the driver ever receives. A task
lost more often than that fails its sources for this run (reported, exit 1); the next run
indexes them. The driver itself dying is a local run dying: uncommitted sources are redone
by the next run, committed ones skipped.

Ray is imported only here, and only when a cluster is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lamina.encoders import Encoder, create_encoder
from lamina.indexer.encoding import encoder_batches
from lamina.indexer.errors import ClusterError, IndexerError, UnreadableSourceError
from lamina.indexer.ingest_types import Embedded, IngestOptions, PreparedSource, Skipped
from lamina.indexer.manifest import Manifest
from lamina.indexer.photo_source import prepare_photo
from lamina.indexer.photos import read_photo
from lamina.indexer.pipeline import Ingest
from lamina.indexer.sources import SourceFile, content_id
from lamina.search.segments import file_stat
from lamina.search.store import Collection

RAY_ADDRESS_ENV = "RAY_ADDRESS"
LOCAL = "local"
START_TIMEOUT_S = float(os.environ.get("LAMINA_CLUSTER_START_TIMEOUT_S", "600"))
"""How long the encoder actors may take to start (placement and model load) before the run
gives up with a clear error."""
PHOTOS_PER_TASK_ENV = "LAMINA_CLUSTER_PHOTOS_PER_TASK"
IN_FLIGHT_BATCHES = 3
"""Encoder calls a task keeps in flight while it reads the next tiles."""


def cluster_address(option: str | None) -> str | None:
    """The cluster to use: ``--cluster`` if given, else ``RAY_ADDRESS``; None (or ``local``):
    index in this process."""
    address = option if option is not None else os.environ.get(RAY_ADDRESS_ENV)
    address = (address or "").strip()
    return None if not address or address == LOCAL else address


@dataclass(frozen=True)
class ClusterOptions:
    address: str
    """``host:port`` of the head's GCS, ``ray://host:10001`` or ``auto`` (a cluster started on
    this machine)."""
    encoders: int | None = None
    """Encoder actors; default one per GPU of the cluster, else half its CPUs (at least 1)."""
    photos_per_task: int = field(
        default_factory=lambda: max(1, int(os.environ.get(PHOTOS_PER_TASK_ENV) or 32))
    )
    """Photos read and embedded by one task (default 32, or $LAMINA_CLUSTER_PHOTOS_PER_TASK):
    the unit a lost worker redoes."""
    task_retries: int = 3
    reader_threads: int = 2
    """Tile reader threads per task (each task holds one CPU)."""


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder actor needs to build the driver's encoder on its own node."""

    key: str
    weights: str | None
    batch_size: int
    fingerprint: str
    device: str  # "auto", "cpu" or "cuda"


@dataclass
class Work:
    """One task's sources: a slide, or a chunk of photos, with what the driver knows of them."""

    files: list[SourceFile]
    metadata: list[dict[str, Any]]
    committed_ids: list[list[str]]
    """Per file: the source ids already committed at its path (a file whose content id is
    among them is skipped, as in a local run)."""


@dataclass
class Plan:
    """The run's tasks, and the files refused before any task (a slide of another tiling)."""

    items: list[Work]
    failures: list[tuple[SourceFile, BaseException]]


@dataclass
class Failed:
    file: SourceFile
    reason: str


# -- encoder actor (runs on the cluster) ----------------------------------------------------------
class EncoderActor:
    """One model load; embeds lists of batches. Made a Ray actor by the driver (``ray.remote``)."""

    def __init__(self, spec: EncoderSpec) -> None:
        import ray

        gpu = bool(ray.get_gpu_ids())
        device = "cuda" if gpu and spec.device != "cpu" else "cpu"
        self.encoder = create_encoder(
            spec.key, weights=spec.weights, device=device, batch_size=spec.batch_size
        )
        if self.encoder.fingerprint != spec.fingerprint:
            raise ClusterError(
                f"encoder {spec.key} on node {ray.get_runtime_context().get_node_id()[:12]} "
                f"is {self.encoder.fingerprint}, the collection's is {spec.fingerprint}: the "
                "node has other weights (give every node the same weights file)"
            )
        self.node_id = ray.get_runtime_context().get_node_id()

    def describe(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "device": str(self.encoder.device)}

    def embed(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        return [self.encoder.embed(b) for b in batches]


# -- source task (runs on the cluster) ----------------------------------------------------------
def run_work(
    work: Work,
    options: IngestOptions,
    shape: tuple[int, int],
    actors: list[tuple[Any, str]],
) -> list[Embedded | Skipped | Failed]:
    """Read, tile and embed one task's sources. Per-source problems come back as ``Failed``;
    Ray's own errors (a dead actor, a lost object) propagate so that Ray re-runs the task."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    local = [a for a, n in actors if n == node]
    actor = local[0] if local else actors[hash(str(work.files[0].path)) % len(actors)][0]
    out: list[Embedded | Skipped | Failed] = []
    for file, meta, known in zip(work.files, work.metadata, work.committed_ids, strict=True):
        try:
            out.append(_one_source(file, meta, known, options, shape, actor))
        except ray.exceptions.RayTaskError as exc:  # the encoder refused this source's pixels
            out.append(Failed(file, _reason(file, exc.cause or exc)))
        except ray.exceptions.RayError:
            raise  # a dead worker, actor or object: Ray re-runs the whole task
        except Exception as exc:  # noqa: BLE001 - one bad file fails only itself
            out.append(Failed(file, _reason(file, exc)))
    return out


def _reason(file: SourceFile, exc: BaseException) -> str:
    reason = str(exc) if isinstance(exc, IndexerError) else f"{type(exc).__name__}: {exc}"
    prefix = f"{file.path}: "
    return reason[len(prefix) :] if reason.startswith(prefix) else reason


def _one_source(
    file: SourceFile,
    meta: dict[str, Any],
    known: list[str],
    options: IngestOptions,
    shape: tuple[int, int],
    actor: Any,
) -> Embedded | Skipped:
    """One source read, tiled and embedded; ``shape`` is the encoder's (input_px, embed_dim)."""
    input_px, dim = shape
    pending: Future[str] | None = None
    if file.kind == "slide":
        from lamina.indexer.slides import prepare_slide

        if known:  # indexed at this path before: the content id decides, before any reading
            sid = content_id(path=file.path)
            if sid in known:
                return Skipped(file, sid)
        else:  # never committed here: the (multi-GB) hash runs beside the reading
            pending = _hash_in_thread(file)
            sid = ""
        prepared = prepare_slide(file, sid, meta, options)
    else:
        data, rgb = read_photo(file.path)
        sid = content_id(data)
        if sid in known:
            return Skipped(file, sid)
        prepared = prepare_photo(file, rgb, sid, meta, options, input_px)
    vectors = _embed(prepared, options.batch_size, dim, actor)
    if pending is not None:
        try:
            prepared.source["source_id"] = pending.result()
        except OSError as exc:
            raise UnreadableSourceError(
                f"{file.path}: cannot read file ({exc.strerror or exc})"
            ) from None
    prepared.source.update(file_stat(file.path))
    return Embedded(file, prepared.source, prepared.tiles, vectors, prepared.note)


def _hash_in_thread(file: SourceFile) -> Future[str]:
    fut: Future[str] = Future()

    def run() -> None:
        try:
            fut.set_result(content_id(path=file.path))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            fut.set_exception(exc)

    threading.Thread(target=run, name="lamina-hash", daemon=True).start()
    return fut


def _embed(prepared: PreparedSource, batch_size: int, dim: int, actor: Any) -> np.ndarray:
    """The source's vectors, its batches sent to ``actor`` a few at a time, in order."""
    import ray

    parts: list[np.ndarray] = []
    in_flight: deque[Any] = deque()
    try:
        for batch in encoder_batches(prepared.images, batch_size):
            in_flight.append(actor.embed.remote([batch]))
            if len(in_flight) >= IN_FLIGHT_BATCHES:
                parts.extend(ray.get(in_flight.popleft()))
        while in_flight:
            parts.extend(ray.get(in_flight.popleft()))
    finally:
        prepared.close()
    if not parts:
        return np.zeros((0, dim), np.float32)
    return np.concatenate(parts)


# -- driver -------------------------------------------------------------------------------------
def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError(
            "--cluster needs Ray: pip install 'lamina[cluster]' (the same Ray version as the "
            "cluster's)"
        ) from None
    return ray


class ClusterIngest(Ingest):
    """An :class:`Ingest` whose sources are read and embedded on a Ray cluster."""

    def __init__(
        self,
        collection: Collection,
        encoder: Encoder,
        cluster: ClusterOptions,
        options: IngestOptions | None = None,
        manifest: Manifest | None = None,
        device: str = "auto",
    ) -> None:
        super().__init__(collection, encoder, options, manifest)
        self.cluster = cluster
        self.device = device
        self._total_files = 0
        self._sources_done = 0

    # -- the run's one progress bar: tiles, with their rate --------------------------------------
    def _progress_bar(self, files: list[SourceFile]) -> Any:
        self._total_files = len(files)
        if not self.options.progress:
            return None
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        return tqdm(
            unit="tile",
            desc=f"indexing {self.collection.name} on the cluster",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=True,
            mininterval=0.2 if tty else 5.0,
        )

    def _advance(self, bar: Any, outcome: Any) -> None:
        self._sources_done += 1
        if bar is not None:
            bar.update(len(outcome.tiles) if isinstance(outcome, Embedded) else 0)
            bar.set_postfix(
                sources=f"{self._sources_done}/{self._total_files}",
                failed=len(self.report.failed),
                refresh=False,
            )

    # -- the outcomes, from the cluster ----------------------------------------------------------
    def _outcomes(self, files: list[SourceFile]) -> Generator[tuple[SourceFile, Any], None, None]:
        ray = _ray()
        t0 = time.perf_counter()
        # Ray prints cluster events (a node that died) on stdout from a thread of its own;
        # stdout is for the run's answer (--json), so they go to stderr while connected.
        with contextlib.redirect_stdout(sys.stderr):
            owns = _connect(ray, self.cluster.address)
            in_flight: dict[Any, Work] = {}
            try:
                actors, described = self._start_encoders(ray)
                described["start_s"] = round(time.perf_counter() - t0, 3)
                self.report.cluster = described
                remote = ray.remote(run_work).options(
                    num_cpus=1,
                    max_retries=self.cluster.task_retries,
                    retry_exceptions=True,  # only Ray's own errors leave run_work
                )
                task_options = replace(
                    self.options, workers=self.cluster.reader_threads, progress=False
                )
                window = max(2, 2 * int(described["reader_cpus"]))
                works = self._works(files)
                yield from works.failures
                pending = iter(works.items)
                while True:
                    while len(in_flight) < window:
                        work = next(pending, None)
                        if work is None:
                            break
                        shape = (self.encoder.input_px, self.encoder.embed_dim)
                        ref = remote.remote(work, task_options, shape, actors)
                        in_flight[ref] = work
                    if not in_flight:
                        break
                    ready, _ = ray.wait(list(in_flight), num_returns=1)
                    for ref in ready:
                        work = in_flight.pop(ref)
                        yield from self._results(ray, ref, work)
            finally:
                for ref in in_flight:
                    ray.cancel(ref, force=True)
                if owns:
                    ray.shutdown()

    def _results(self, ray: Any, ref: Any, work: Work) -> Iterator[tuple[SourceFile, Any]]:
        try:
            outcomes = ray.get(ref)
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            for file in work.files:
                yield (
                    file,
                    IndexerError(
                        f"{file.path}: lost on the cluster {self.cluster.task_retries + 1} times "
                        f"({type(cause).__name__}: {str(cause).splitlines()[0][:200]}); "
                        "the next run indexes it"
                    ),
                )
            return
        for outcome in outcomes:
            if isinstance(outcome, Failed):
                yield outcome.file, IndexerError(f"{outcome.file.path}: {outcome.reason}")
            else:
                yield outcome.file, outcome

    def _works(self, files: list[SourceFile]) -> Plan:
        """Slides one per task, photos ``photos_per_task`` per task, with metadata and the ids
        already committed at each path; slides the collection cannot tile fail here."""
        ids_at: dict[str, list[str]] = {}
        for sid, paths in self._known.items():
            for p in paths:
                ids_at.setdefault(p, []).append(sid)
        plan = Plan([], [])
        photos: Work | None = None
        for file in files:
            if file.kind == "slide":
                try:
                    self._check_tiling(file)
                except IndexerError as exc:
                    plan.failures.append((file, exc))
                    continue
            meta, known = self._metadata(file), ids_at.get(str(file.path.resolve()), [])
            if file.kind == "slide":
                plan.items.append(Work([file], [meta], [known]))
                continue
            if photos is None or len(photos.files) >= self.cluster.photos_per_task:
                photos = Work([], [], [])
                plan.items.append(photos)
            photos.files.append(file)
            photos.metadata.append(meta)
            photos.committed_ids.append(known)
        return plan

    def _start_encoders(self, ray: Any) -> tuple[list[tuple[Any, str]], dict[str, Any]]:
        """Place the encoder actors and wait until each has loaded its model."""
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        if self.device == "cuda" and gpus <= 0:
            raise ClusterError("--device cuda: the cluster has no GPU")
        use_gpu = gpus > 0 and self.device != "cpu"
        n = self.cluster.encoders or (max(1, int(gpus)) if use_gpu else max(1, int(cpus) // 2))
        gpu_share = min(1.0, gpus / n) if use_gpu else 0.0
        if cpus - n < 1:
            raise ClusterError(
                f"the cluster has {cpus:g} CPUs: {n} encoders of one CPU each leave none to read "
                "the sources; ask for fewer (--encoders) or add nodes"
            )
        spec = EncoderSpec(
            key=self.encoder.key,
            weights=self.encoder.weights_path or self.collection.info.get("encoder_weights"),
            batch_size=self.options.batch_size,
            fingerprint=self.encoder.fingerprint,
            device=self.device,
        )
        actor_cls = ray.remote(EncoderActor).options(
            num_cpus=1,
            num_gpus=gpu_share,
            max_restarts=self.cluster.task_retries,
            max_task_retries=self.cluster.task_retries,
            scheduling_strategy="SPREAD",
        )
        handles = [actor_cls.remote(spec) for _ in range(n)]
        try:
            info = ray.get([h.describe.remote() for h in handles], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(
                f"the cluster did not start {n} encoders ({gpu_share:g} GPU and 1 CPU each) in "
                f"{START_TIMEOUT_S:.0f} s (LAMINA_CLUSTER_START_TIMEOUT_S)"
            ) from None
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            detail = str(cause) if isinstance(cause, Exception) else str(exc).splitlines()[0]
            raise ClusterError(f"an encoder could not start on the cluster: {detail}") from None
        alive = [node for node in ray.nodes() if node.get("Alive")]
        described = {
            "nodes": len(alive),
            "cpus": cpus,
            "gpus": gpus,
            "encoders": n,
            "gpu_per_encoder": gpu_share,
            "encoder_devices": sorted({d["device"] for d in info}),
            "reader_cpus": cpus - n,
        }
        return [(h, d["node_id"]) for h, d in zip(handles, info, strict=True)], described


def _connect(ray: Any, address: str) -> bool:
    """Join the cluster at ``address``; True when this call connected (and must disconnect)."""
    if ray.is_initialized():
        return False
    _check_reachable(address)
    try:
        ray.init(
            address=address,
            logging_level=logging.ERROR,
            log_to_driver=False,
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cannot join the Ray cluster at {address!r}: {first}") from None
    return True


def _check_reachable(address: str) -> None:
    """Fail fast on a ``host:port`` where nothing listens (Ray itself retries for minutes)."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not host:
        raise ClusterError(
            f"--cluster {address!r}: expected host:port of the head, ray://host:port or auto"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ClusterError(
            f"cannot join the Ray cluster at {address!r}: nothing answers there "
            f"({exc.strerror or exc})"
        ) from None


def cluster_ingest(
    collection: Collection,
    encoder: Encoder,
    paths: Sequence[str | os.PathLike[str]],
    cluster: ClusterOptions,
    options: IngestOptions | None = None,
    manifest: Manifest | None = None,
    device: str = "auto",
) -> Any:
    """Index ``paths`` into ``collection`` on the cluster; the same report as a local run."""
    return ClusterIngest(collection, encoder, cluster, options, manifest, device).run(paths)
