"""The real local Ray cluster of the cluster tests: one head and two worker nodes (1 CPU each).

See ``bench/ray_local.py``: each node is its own ``ray start --block`` process with a temp dir
unique to this test run; teardown ends only the processes it started. The fixture yields a
``RayCluster``: ``address`` (for ``--cluster`` / ``RAY_ADDRESS``), ``env()``,
``running(i, title)``, ``kill_worker(i)`` (SIGKILL worker node i's raylet),
``restart_worker(i)`` and ``wait_for_nodes(n)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.ray_local import RayCluster, start_cluster, stop_cluster

__all__ = ["RayCluster", "ray_cluster"]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """One local Ray cluster (head + 2 workers, 1 CPU each) shared by the cluster tests."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:  # the test extra installs ray; its absence is a failure
        pytest.fail(
            f"ray is not installed ({exc}); install the test extra: pip install -e '.[test]'"
        )
    cluster = start_cluster(2)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
