"""The ``lamina`` console script: runs the command line, or says which install it needs.

The base distribution is the client alone; the command line (indexing, serving, local and
``--url`` commands) comes with the ``server`` extra. Without it, the script names the missing
package and the install command instead of printing a traceback, and exits 2.
"""

from __future__ import annotations

import sys

SERVER_PACKAGES = {"click", "numpy", "faiss", "duckdb", "flask", "pyarrow", "openslide", "PIL"}


def main() -> None:
    try:
        from lamina.api.cli import main as run
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in SERVER_PACKAGES:
            raise
        print(
            f"error: the lamina command line needs the server install (missing package {top!r}): "
            "pip install 'lamina[server]'. The client alone is `from lamina import Client`.",
            file=sys.stderr,
        )
        sys.exit(2)
    run()
