"""Fixtures for the API tests: a derm collection indexed once, the app, a live server, transports."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

DERM_DIR = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "derm" / "pad_ufes20_subset"
)


def index_derm(home: Path, images: list[Path] | Path, collection: str = "derm") -> Any:
    from lamina.encoders import create_encoder
    from lamina.indexer import IngestOptions, Manifest, ingest
    from lamina.search import Store

    paths = images if isinstance(images, list) else [images]
    return ingest(
        Store(home),
        collection,
        paths,
        create_encoder("test/tiny-vit", device="cpu"),
        IngestOptions(progress=False),
        Manifest.load(DERM_DIR / "labels.csv", "filename"),
    )


def poll(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    """Call ``fetch`` until ``done(answer)`` holds (bounded): a server prepares a new snapshot
    off the request path and answers on the previous one meanwhile. Returns the last answer;
    the caller asserts on it, so a timeout fails with what was seen."""
    deadline = time.monotonic() + timeout
    answer = fetch()
    while not done(answer) and time.monotonic() < deadline:
        time.sleep(0.05)
        answer = fetch()
    return answer


def write_synthetic(
    home: Path,
    name: str,
    sources: dict[str, np.ndarray],
    dim: int,
    meta: dict[str, dict[str, Any]] | None = None,
) -> None:
    """A collection built directly from hand-made vectors: source name -> (n, dim) tiles."""
    from lamina.search import Store

    col = Store(home).open_or_create(
        name, encoder="synthetic/v1", fingerprint="synthetic@1", embed_dim=dim, tile_px=224, mpp=0.5
    )
    w = col.writer("synthetic")
    for src, vecs in sources.items():
        vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        tiles = [
            {
                "kind": "tile",
                "x": 224 * i,
                "y": 0,
                "level": 0,
                "size_px": 224,
                "tile_px": 224,
                "mpp": 0.5,
                "tissue_fraction": 1.0,
                **(meta or {}).get(src, {}),
            }
            for i in range(len(vecs))
        ]
        w.add_source(
            {
                "source_id": src,
                "source": f"/nonexistent/{src}.svs",
                "kind": "slide",
                "width": 224 * len(vecs),
                "height": 224,
                "mpp": 0.5,
            },
            tiles,
            vecs.astype(np.float32),
        )
    w.commit()


@pytest.fixture(scope="session")
def derm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DERM_DIR.is_dir():
        pytest.skip(f"derm sample not found at {DERM_DIR}")
    home = tmp_path_factory.mktemp("derm") / "home"
    home.mkdir()
    index_derm(home, DERM_DIR / "images")
    return home


@pytest.fixture(scope="session")
def app(derm_home: Path) -> Any:
    from lamina.api.app import create_app

    return create_app({"HOME": str(derm_home), "TESTING": True, "API_TOKEN": None})


@pytest.fixture()
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture(scope="session")
def derm_images() -> list[Path]:
    return sorted((DERM_DIR / "images").glob("*.jpg"))


class FlaskTestTransport:
    """Runs the Python client against an in-process app (no sockets)."""

    def __init__(self, app: Any) -> None:
        self.client = app.test_client()

    def __call__(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        resp = self.client.open(path, method=method, headers=headers, data=body)
        return resp.status_code, dict(resp.headers.items()), resp.get_data()


class LiveServer:
    """waitress serving an app in a thread on 127.0.0.1 and an ephemeral port."""

    def __init__(self, app: Any, threads: int = 8) -> None:
        import waitress.server

        self.server = waitress.server.create_server(
            app, host="127.0.0.1", port=0, threads=threads, ident="lamina-test"
        )
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.closing = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.server.run()
        except (OSError, ValueError):  # the socket map is torn down under the loop on close
            if not self.closing:
                raise

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing = True
        self.server.task_dispatcher.shutdown(timeout=5)
        self.server.close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def live_url(app: Any) -> Iterator[str]:
    with LiveServer(app) as srv:
        yield srv.url


@pytest.fixture(scope="session")
def synthetic() -> Any:
    return write_synthetic


@pytest.fixture(scope="session")
def live_server() -> Any:
    return LiveServer


@pytest.fixture()
def flask_transport(app: Any) -> FlaskTestTransport:
    return FlaskTestTransport(app)


@pytest.fixture(scope="session")
def flask_transport_cls() -> Any:
    return FlaskTestTransport


class ServedHome:
    """`lamina serve` in a subprocess over ``home`` on a free local port (the real server, as a
    user starts it); ``url`` once it answers /health. Stops it (SIGTERM, then SIGKILL)."""

    def __init__(self, home: Path, timeout: float = 60.0) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.home, self.port, self.timeout = home, port, timeout
        self.url = f"http://127.0.0.1:{port}"
        self.proc: Any = None

    def __enter__(self) -> ServedHome:
        import os
        import subprocess
        import sys
        import urllib.request

        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lamina.api", "--home", str(self.home), "serve"]
            + ["--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lamina serve exited: {self.proc.stderr.read().decode()}")
            try:
                with urllib.request.urlopen(self.url + "/api/v1/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"lamina serve did not answer on {self.url} in {self.timeout}s")

    def __exit__(self, *exc: object) -> None:
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


class CliOn:
    """The ``lamina`` command line (click, in this process) on one home, in one mode: ``local``
    (``--home``: the in-process app) or ``url`` (``--url`` of a `lamina serve` on that home,
    with ``--home`` pointing nowhere, so nothing can be read locally by mistake)."""

    def __init__(self, mode: str, home: Path, url: str | None = None) -> None:
        self.mode, self.home, self.url = mode, home, url

    def __call__(self, *args: str, code: int = 0) -> Any:
        from click.testing import CliRunner

        from lamina.api.cli import cli

        if self.mode == "url":
            argv = ["--home", str(self.home.parent / "no-such-home"), "--url", str(self.url)]
        else:
            argv = ["--home", str(self.home)]
        res = CliRunner().invoke(cli, [*argv, *args], env={"LAMINA_URL": ""})
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        assert res.exit_code == code, (self.mode, args, res.exit_code, res.stdout, res.stderr)
        return res

    def json(self, *args: str, code: int = 0) -> Any:
        import json

        return json.loads(self(*args, "--json", code=code).stdout)


@pytest.fixture(scope="session")
def served_home() -> Any:
    return ServedHome


@pytest.fixture(scope="session")
def cli_on() -> Any:
    return CliOn


@pytest.fixture(scope="module", params=["local", "url"])
def cli_mode(request: pytest.FixtureRequest) -> str:
    """Run a CLI test module twice: in process on the home, and with --url against a real
    `lamina serve` on that home (see ``cli_for``)."""
    return str(request.param)


@pytest.fixture(scope="module")
def cli_for(cli_mode: str) -> Iterator[Callable[[Path], CliOn]]:
    """``cli_for(home)``: the CLI on ``home`` in this module's mode; in ``url`` mode one
    `lamina serve` per home, started on first use and stopped when the module ends."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        opened: dict[Path, CliOn] = {}

        def cli_on_home(home: Path) -> CliOn:
            if home not in opened:
                url = stack.enter_context(ServedHome(home)).url if cli_mode == "url" else None
                opened[home] = CliOn(cli_mode, home, url)
            return opened[home]

        yield cli_on_home


# fields that differ between two runs of one command by nature, wherever they appear
VOLATILE = frozenset(
    {
        "ms",  # the plan's timings
        "seconds",
        "created_at",
        "id",  # an export's id
        "home",  # status: the home path or the URL asked
        "memory_bytes",  # what the answering process holds
        "resident_vector_bytes",
    }
)


def stable(doc: Any) -> Any:
    """``doc`` without the VOLATILE fields, at any depth."""
    if isinstance(doc, dict):
        return {k: stable(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [stable(v) for v in doc]
    return doc
