"""Helpers of the HTTP harnesses (bench.fuzz, bench.load): index the derm sample with a real
``lamina index``, run a real ``lamina serve`` subprocess, read a process's resident memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DERM = Path(os.environ.get("LAMINA_SHARED_DATA") or REPO.parent / "shared" / "data") / (
    "derm/pad_ufes20_subset"
)


def lamina_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("lamina")
    return (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from lamina.api.cli import main; main()"]
    )


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    env.update(LAMINA_HOME=str(home), **extra)
    return env


def index_cmd(home: Path, images: Sequence[Path] | Path, collection: str = "derm") -> list[str]:
    paths = [str(images)] if isinstance(images, Path) else [str(p) for p in images]
    return [
        *lamina_cmd(),
        "--home",
        str(home),
        "index",
        *paths,
        "--manifest",
        str(DERM / "labels.csv"),
        "--source-column",
        "filename",
        "--collection",
        collection,
        "--encoder",
        "classic/stain-texture",
    ]


def index_derm(home: Path, images: Sequence[Path] | Path | None = None) -> None:
    """``lamina index`` of the derm photos (all of them by default) into ``home``."""
    if not (DERM / "labels.csv").is_file():
        raise SystemExit(f"derm sample not found at {DERM}")
    subprocess.run(
        index_cmd(home, images or DERM / "images"),
        check=True,
        env=clean_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@contextmanager
def serve(
    home: Path, workers: int = 8, **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``lamina serve`` on a free port; yields (base URL, process) once /health answers."""
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(
        [
            *lamina_cmd(),
            "--home",
            str(home),
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env=clean_env(home, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/api/v1/health", timeout=5):  # noqa: S310
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("lamina serve did not start") from None
                time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
