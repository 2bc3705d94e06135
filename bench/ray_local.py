"""A real Ray cluster on this machine: one head and N worker nodes, each its own raylet.

Used by the cluster tests (``tests/cluster/conftest.py``) and ``python -m bench.cluster``.
Each node is its own ``ray start --block`` process (its own raylet, object store and workers),
started in its own session with a temp dir unique to the cluster, so two clusters on one machine
never share or stop each other's processes. ``stop_cluster`` ends only the processes it started
(by process group and process id), never ``ray stop``, which would stop every Ray on the machine.

``kill_worker(i)`` SIGKILLs the raylet of worker node ``i`` (a node dying: its ``ray start``
process then ends the node's remaining processes); ``restart_worker(i)`` starts a fresh node in
its place. Node failure detection is shortened (1 s health checks) so a killed node is declared
dead within a few seconds instead of the default ~30 s. Linux only (reads /proc).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE_BYTES = 150_000_000
START_TIMEOUT_S = 90.0
SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Node:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class RayCluster:
    """A running local cluster: ``address`` is what ``--cluster`` / ``RAY_ADDRESS`` take."""

    address: str
    temp_dir: Path
    head: _Node
    workers: list[_Node] = field(default_factory=list)
    worker_cpus: int = 1

    def env(self, **extra: str) -> dict[str, str]:
        """A subprocess environment that reaches this cluster (``RAY_ADDRESS`` set)."""
        env = dict(os.environ)
        env["RAY_ADDRESS"] = self.address
        env.update(extra)
        return env

    def worker_alive(self, i: int) -> bool:
        return self.workers[i].proc.poll() is None

    def running(self, i: int, title: str) -> bool:
        """Whether worker node ``i`` has a process titled ``title`` (e.g. ``ray::run_work``:
        a worker executing that task; idle workers are titled ``ray::IDLE``)."""
        node = self.workers[i]
        return node.proc.poll() is None and any(
            _cmdline(pid).startswith(title) for pid in _descendants(node.proc.pid)
        )

    def kill_worker(self, i: int = 0, timeout_s: float = 30.0) -> None:
        """SIGKILL the raylet of worker node ``i`` and wait until the node's processes are gone."""
        node = self.workers[i]
        if node.proc.poll() is not None:
            return
        raylets = [pid for pid in _descendants(node.proc.pid) if _comm(pid) == "raylet"]
        if not raylets:
            raise RuntimeError(f"no raylet under worker node {node.name} (pid {node.proc.pid})")
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)
        try:
            node.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(node.proc)

    def restart_worker(self, i: int = 0) -> None:
        """Start a fresh worker node in slot ``i`` (after ``kill_worker``)."""
        old = self.workers[i]
        if old.proc.poll() is None:
            _kill_group(old.proc)
        self.workers[i] = _start_worker(self.address, self.temp_dir, f"w{i}", self.worker_cpus)

    def wait_for_nodes(self, n: int, timeout_s: float = 60.0) -> None:
        """Block until the cluster counts ``n`` alive nodes (asked from a separate driver)."""
        code = (
            "import ray,sys,time\n"
            f"ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False)\n"
            f"end=time.time()+{timeout_s}\n"
            "while time.time()<end:\n"
            "    n=sum(1 for x in ray.nodes() if x['Alive'])\n"
            f"    if n=={n}: sys.exit(0)\n"
            "    time.sleep(0.5)\n"
            "sys.exit(1)\n"
        )
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=timeout_s + 60
        )
        if r.returncode != 0:
            raise RuntimeError(
                f"cluster did not reach {n} alive nodes: {r.stderr.decode()[-2000:]}"
            )


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (from /proc: Linux only, like the rest of the fixture)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [root]
    while frontier:
        cur = frontier.pop()
        kids = [pid for pid, pp in parent.items() if pp == cur]
        found.extend(kids)
        frontier.extend(kids)
    return found


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "disabled"
    with log.open("wb") as out:
        return subprocess.Popen(
            [RAY, "start", "--block", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(REPO),
            env=env,
            start_new_session=True,
        )


def _wait_started(node: _Node) -> None:
    end = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < end:
        text = node.log.read_text(errors="replace") if node.log.exists() else ""
        if "Ray runtime started" in text:
            return
        if node.proc.poll() is not None:
            raise RuntimeError(f"ray node {node.name} exited while starting:\n{text[-3000:]}")
        time.sleep(0.3)
    _kill_group(node.proc)
    raise RuntimeError(f"ray node {node.name} did not start in {START_TIMEOUT_S:.0f} s")


def _common_args(temp_dir: Path, cpus: int) -> list[str]:
    return [
        "--num-cpus",
        str(cpus),
        "--num-gpus",
        "0",
        "--object-store-memory",
        str(OBJECT_STORE_BYTES),
        "--node-ip-address",
        "127.0.0.1",
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
        "--dashboard-agent-listen-port",
        str(_free_port()),
    ]


def _start_worker(address: str, temp_dir: Path, name: str, cpus: int) -> _Node:
    log = temp_dir / f"{name}-{time.monotonic_ns()}.log"
    args = ["--address", address, *_common_args(temp_dir, cpus)]
    args += ["--resources", json.dumps({name: 1})]
    node = _Node(name, _spawn(args, log), log)
    _wait_started(node)
    return node


def start_cluster(n_workers: int = 2, head_cpus: int = 1, worker_cpus: int = 1) -> RayCluster:
    """Start a head and ``n_workers`` worker nodes; stop with ``stop_cluster``."""
    temp_dir = Path(tempfile.mkdtemp(prefix="lray", dir="/tmp"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head_args = [
        "--head",
        "--port",
        str(port),
        "--include-dashboard",
        "false",
        "--dashboard-port",
        str(_free_port()),
        "--ray-client-server-port",
        str(_free_port()),
        *_common_args(temp_dir, head_cpus),
        "--system-config",
        json.dumps(SYSTEM_CONFIG),
        "--resources",
        json.dumps({"head": 1}),
    ]
    head = _Node("head", _spawn(head_args, temp_dir / "head.log"), temp_dir / "head.log")
    cluster = RayCluster(address=address, temp_dir=temp_dir, head=head, worker_cpus=worker_cpus)
    try:
        _wait_started(head)
        for i in range(n_workers):
            cluster.workers.append(_start_worker(address, temp_dir, f"w{i}", worker_cpus))
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: RayCluster) -> None:
    """End every process this cluster started: workers first, then the head; remove its temp dir."""
    for node in [*cluster.workers, cluster.head]:
        strays = _descendants(node.proc.pid)
        _kill_group(node.proc)
        for pid in strays:  # a child that left the node's process group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
