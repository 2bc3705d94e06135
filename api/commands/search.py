"""`lamina search`: image-to-image queries against a collection.

``--nprobe/--ef-search/--refine/--strategy`` override the collection's search parameters for
this query; ``--explain`` prints the planner's plan to stderr (``--json`` always carries it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from lamina.api.cli import CliContext, emit_json, handle_errors


def _print_hits(doc: dict[str, Any]) -> None:
    click.echo(
        f"collection {doc['collection']}  snapshot {doc['snapshot']}  encoder {doc['encoder']}"
    )
    for rank, h in enumerate(doc["hits"], 1):
        meta = ", ".join(f"{k}={v}" for k, v in list(h["metadata"].items())[:4] if v is not None)
        where = "" if h["kind"] == "photo" else f" @({h['x']},{h['y']})"
        click.echo(
            f"{rank:>3}. {h['score']:.4f}  tile {h['tile_id']:<8} "
            f"{Path(h['source']).name}{where}  {meta}"
        )
    for g in doc.get("groups") or []:
        value = Path(g["name"]).name if g.get("name") else g["value"]  # slides by file name
        click.echo(f"  group {g['key']}={value}: best {g['score']:.4f}, {g['n_hits']} hits")


def format_plan(plan: dict[str, Any]) -> str:
    """One paragraph describing how a query was answered (the answer's ``plan``)."""
    if not plan:
        return "plan: none reported"
    lines = [
        f"plan: {plan.get('strategy')} over index {plan.get('index')}"
        + (f" ({plan['reason']})" if plan.get("reason") else "")
        + (" -- fell back to exact" if plan.get("fallback") else ""),
        f"  matched {plan.get('matched')} of {plan.get('total')} tiles "
        f"(selectivity {plan.get('selectivity')}), {plan.get('candidates')} candidates scored",
    ]
    breadth = [f"{key} {plan[key]}" for key in ("nprobe", "ef_search") if plan.get(key)]
    lines.append(
        f"  segments: {plan.get('segments_indexed', 0)} through the index, "
        f"{plan.get('segments_exact', 0)} exact; backend {plan.get('backend')}"
        + (f"; {', '.join(breadth)}" if breadth else "")
    )
    ms = plan.get("ms") or {}
    if ms:
        lines.append("  ms: " + ", ".join(f"{key} {v}" for key, v in ms.items()))
    return "\n".join(lines)


def search_params(
    nprobe: int | None, ef_search: int | None, refine: int | None, strategy: str | None
) -> dict[str, Any] | None:
    """The per-query overrides given on the command line (None when there are none)."""
    given = {"nprobe": nprobe, "ef_search": ef_search, "refine": refine, "strategy": strategy}
    return {key: v for key, v in given.items() if v is not None} or None


def param_options(fn: Any) -> Any:
    """``--nprobe/--ef-search/--refine/--strategy`` (shared with commands that search)."""
    fn = click.option(
        "--strategy",
        type=click.Choice(["auto", "exact", "ann"]),
        default=None,
        help="auto: the planner chooses by selectivity; exact or ann: forced.",
    )(fn)
    fn = click.option(
        "--refine",
        type=click.IntRange(1, 1000),
        default=None,
        help="PQ/SQ indexes: re-rank k*N candidates exactly.",
    )(fn)
    fn = click.option(
        "--ef-search", type=click.IntRange(1, 1 << 16), default=None, help="HNSW beam width."
    )(fn)
    return click.option(
        "--nprobe", type=click.IntRange(1, 1 << 20), default=None, help="IVF lists probed."
    )(fn)


def register(cli: click.Group) -> None:
    @cli.command("search")
    @click.option("--collection", required=True)
    @click.option(
        "--image",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="Query by an image file.",
    )
    @click.option("--tile-id", type=int, default=None, help="Query by a stored tile.")
    @click.option(
        "--slide",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="Query by a region of a slide (with --region).",
    )
    @click.option("--region", default=None, help="X,Y,W,H in level-0 pixels of --slide.")
    @click.option("-k", "k", type=click.IntRange(1, 10_000), default=10, show_default=True)
    @click.option(
        "--offset",
        type=click.IntRange(0, 9_999),
        default=0,
        show_default=True,
        help="Skip the N best hits (groups when grouped): the next page; offset + k <= 10000.",
    )
    @click.option(
        "--filter",
        "filters",
        multiple=True,
        help="COL=V1[,V2] (exact), COL~=V1[,V2] (any case), COL!=V, COL>=N, COL<=N, COL>N, "
        "COL<N (repeat to AND).",
    )
    @click.option(
        "--group-by",
        default=None,
        metavar="KEY",
        help="One hit per group, k groups: slide, patient (the declared patient column), "
        "case, lesion, or any metadata column by name.",
    )
    @click.option(
        "--exclude-same",
        default=None,
        help="Leave out hits sharing this column's value with the query tile: a column "
        "(e.g. lesion_id) or patient / case / lesion (the declared column).",
    )
    @param_options
    @click.option(
        "--partial",
        is_flag=True,
        help="With --url on a sharded server: answer without unreachable shards (listed).",
    )
    @click.option("--explain", is_flag=True, help="Print the query plan to stderr.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def search_command(
        ctx: CliContext,
        collection: str,
        image: str | None,
        tile_id: int | None,
        slide: str | None,
        region: str | None,
        k: int,
        offset: int,
        filters: tuple[str, ...],
        group_by: str | None,
        exclude_same: str | None,
        nprobe: int | None,
        ef_search: int | None,
        refine: int | None,
        strategy: str | None,
        partial: bool,
        explain: bool,
        as_json: bool,
    ) -> None:
        """Find the k tiles most similar to an image, a stored tile or a slide region."""
        modes = sum(x is not None for x in (image, tile_id, slide))
        if modes != 1:
            raise click.UsageError("give exactly one of --image, --tile-id or --slide")
        if (slide is None) != (region is None):
            raise click.UsageError("--slide and --region go together")
        box = None
        if region is not None:
            from lamina.api.queries import parse_region

            try:
                box = parse_region(region)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--region") from None
        query = Query(
            collection,
            image,
            tile_id,
            slide,
            box,
            k,
            list(filters),
            group_by,
            exclude_same,
            search_params(nprobe, ef_search, refine, strategy),
            partial,
            offset,
        )
        doc = run_query(ctx.client(), query)
        for warning in doc.get("warnings") or []:  # filter values that match nothing
            click.echo(f"warning: {warning}", err=True)
        if as_json:
            emit_json(doc)
            return
        _print_hits(doc)
        if doc.get("missing_segments"):
            click.echo(f"warning: {doc.get('warning')}", err=True)
        if doc.get("missing_shards"):
            shards = ", ".join(str(s) for s in doc["missing_shards"])
            click.echo(f"warning: partial answer, shard(s) {shards} did not answer", err=True)
        if explain:
            click.echo(format_plan(doc.get("plan") or {}), err=True)


@dataclass(frozen=True)
class Query:
    """One `lamina search`, whichever way it is answered (local store or a server)."""

    collection: str
    image: str | None
    tile_id: int | None
    slide: str | None
    region: tuple[int, int, int, int] | None
    k: int
    filters: list[str]
    group_by: str | None
    exclude_same: str | None
    params: dict[str, Any] | None = None
    partial: bool = False
    offset: int = 0


def run_query(client: Any, q: Query) -> dict[str, Any]:
    """Answer ``q`` through ``client`` (a server with ``--url``, else the in-process app).
    The filter expressions go as typed: the server parses them (one parser, its warnings), and
    two conditions on one column stay two (``age>=70`` and ``age>=60`` both hold)."""
    common: dict[str, Any] = {
        "k": q.k,
        "filters": q.filters or None,
        "group_by": q.group_by,
        "params": q.params,
        "partial": q.partial,
        "offset": q.offset,
    }
    if q.image is not None:
        res = client.search_image(q.collection, q.image, exclude_same=q.exclude_same, **common)
    elif q.tile_id is not None:
        res = client.search_tile(
            q.collection, tile_id=q.tile_id, exclude_same=q.exclude_same, **common
        )
    else:
        # the server reads only slides it has indexed: pass the path as indexed
        slide = str(Path(q.slide or "").resolve())
        res = client.search_region(q.collection, slide, list(q.region or ()), **common)
    return dict(res.to_dict())
