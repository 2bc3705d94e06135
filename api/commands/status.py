"""`lamina status`: collections, their encoder, counts, snapshot, index type, runs and failures.

One path: the collection routes through ``ctx.client()`` (a server with ``--url``, else the
in-process app); ``home`` in ``--json`` names where the answer came from (the URL or the home).
``--cluster`` reads the shard actors of a Ray cluster directly (no store is involved).
"""

from __future__ import annotations

import click

from lamina.api.cli import CliContext, emit_json, handle_errors

ROLES = ("patient", "case", "lesion")


def register(cli: click.Group) -> None:
    @cli.command("status")
    @click.option("--collection", default=None, help="Only this collection.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.option(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="Show the shard actors of `lamina serve --cluster` servers on this Ray cluster.",
    )
    @click.pass_obj
    @handle_errors
    def status_command(
        ctx: CliContext, collection: str | None, as_json: bool, cluster: str | None
    ) -> None:
        """Collections, encoder fingerprint, counts, snapshot, index type, last runs, failures."""
        if cluster:
            _cluster_status(cluster, collection, as_json)
            return
        client = ctx.client()
        if collection:
            cols = [client.collection(collection)]
        else:  # the listing holds one run each; ask for each collection's full status
            cols = [
                c if "error" in c else client.collection(c["name"]) for c in client.collections()
            ]
        where = ctx.url or str(ctx.home)
        if as_json:
            emit_json({"ok": True, "home": where, "collections": cols})
            return
        if not cols:
            click.echo(f"no collections in {where}")
        for c in cols:
            if "error" in c:
                click.echo(f"{c['name']}: DAMAGED: {c['error']}")
                continue
            kinds = (
                ", ".join(f"{v} {k}s" for k, v in sorted(c["sources_by_kind"].items())) or "empty"
            )
            click.echo(
                f"{c['name']}: {c['encoder']} ({c['fingerprint']}), {c['embed_dim']}-d, "
                f"{kinds}, {c['tiles']} vectors in {c['segments']} segments, "
                f"index {c['index_type']}, snapshot {c['snapshot']}"
            )
            roles = [f"{r} {c[f'{r}_column']}" for r in ROLES if c.get(f"{r}_column")]
            if roles:
                click.echo(f"  columns: {', '.join(roles)}")
            if c.get("deleted_pending_erasure"):
                click.echo(
                    f"  {c['deleted_pending_erasure']} deleted tiles still on disk; "
                    f"`lamina compact --collection {c['name']} --erase` erases them"
                )
            for r in c["last_runs"]:
                click.echo(
                    f"  run {r['run_id']}: {r['indexed']} indexed, {r['unchanged']} unchanged, "
                    f"{r['failed']} failed ({r['seconds']}s)"
                )
            for f in c["failures"][-10:]:
                click.echo(f"  failed: {f['file']}: {f['reason']}")
            for p in c.get("damaged", []):
                click.echo(f"  DAMAGED (quarantined): {p['file']}: {p['reason']}")
            changed = c.get("changed_sources") or {}
            for f in changed.get("files", []):
                click.echo(f"  source {f['state']} since indexing: {f['source']}")
            if c.get("damaged") or changed.get("files"):
                click.echo("  `lamina verify` checks everything; `lamina repair` re-indexes")


def _cluster_status(address: str, collection: str | None, as_json: bool) -> None:
    """Shards and replicas of every sharded server on the cluster: snapshot, tiles, memory."""
    from lamina.search.errors import ShardUnavailableError
    from lamina.search.sharded import cluster_status

    try:
        doc = cluster_status(address=address)
    except Exception as exc:  # noqa: BLE001 - Ray raises several kinds when unreachable
        raise ShardUnavailableError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    if collection:
        for r in doc["replicas"]:
            r["collections"] = {
                n: c for n, c in (r.get("collections") or {}).items() if n == collection
            }
    if as_json:
        emit_json({"ok": True, "cluster": address, **doc})
        return
    if not doc["replicas"]:
        click.echo(f"no shard actors on {address} (start one with `lamina serve --cluster`)")
    for r in doc["replicas"]:
        head = f"server {r['server']} shard {r['shard']} replica {r['replica']}"
        if not r["alive"]:
            click.echo(f"{head}: DOWN ({r.get('error')})")
            continue
        click.echo(
            f"{head}: pid {r['pid']} on {r['node']}, resident {r['rss_bytes'] / 2**20:.1f} MiB"
        )
        for name, c in sorted((r.get("collections") or {}).items()):
            click.echo(
                f"  {name}: snapshot {c['snapshot']}, {c['segments']} segments, "
                f"{c['tiles']} tiles, heap {c['heap_bytes'] / 2**20:.1f} MiB, "
                f"vectors {c['vector_bytes'] / 2**20:.1f} MiB mapped"
            )
