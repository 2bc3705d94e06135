"""`lamina search`: image-to-image queries against a collection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from api.cli import CliContext, emit_json, handle_errors


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
        click.echo(f"  group {g['key']}={g['value']}: best {g['score']:.4f}, {g['n_hits']} hits")


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
        "--filter",
        "filters",
        multiple=True,
        help="COL=V1[,V2], COL!=V, COL>=N, COL<=N, COL>N, COL<N (repeat to AND).",
    )
    @click.option("--group-by", type=click.Choice(["slide", "patient"]), default=None)
    @click.option(
        "--exclude-same",
        default=None,
        help="Leave out hits sharing this column's value with the query tile (e.g. patient_id).",
    )
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
        filters: tuple[str, ...],
        group_by: str | None,
        exclude_same: str | None,
        as_json: bool,
    ) -> None:
        """Find the k tiles most similar to an image, a stored tile or a slide region."""
        modes = sum(x is not None for x in (image, tile_id, slide))
        if modes != 1:
            raise click.UsageError("give exactly one of --image, --tile-id or --slide")
        if (slide is None) != (region is None):
            raise click.UsageError("--slide and --region go together")
        if ctx.url:
            doc = _remote(
                ctx, collection, image, tile_id, slide, region, k, filters, group_by, exclude_same
            )
        else:
            doc = _local(
                ctx, collection, image, tile_id, slide, region, k, filters, group_by, exclude_same
            )
        if as_json:
            emit_json(doc)
        else:
            _print_hits(doc)


def _local(
    ctx: CliContext,
    collection: str,
    image: str | None,
    tile_id: int | None,
    slide: str | None,
    region: str | None,
    k: int,
    filters: tuple[str, ...],
    group_by: str | None,
    exclude_same: str | None,
) -> dict[str, Any]:
    from api.queries import image_vector, parse_region, region_vector
    from search import SearchService

    service = SearchService(ctx.store())
    kwargs: dict[str, Any] = {
        "filters": list(filters),
        "group_by": group_by,
        "exclude_same": exclude_same,
    }
    if tile_id is not None:
        return service.search_tile(collection, tile_id, k, **kwargs).to_dict()
    col = service.collection(collection)
    if image is not None:
        vec = image_vector(col, Path(image).read_bytes(), image)
        return service.search(collection, vec, k, **kwargs).to_dict()
    try:
        box = parse_region(region or "")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--region") from None
    vec, _ = region_vector(col, slide or "", box)
    return service.search(collection, vec, k, **kwargs).to_dict()


def _remote(
    ctx: CliContext,
    collection: str,
    image: str | None,
    tile_id: int | None,
    slide: str | None,
    region: str | None,
    k: int,
    filters: tuple[str, ...],
    group_by: str | None,
    exclude_same: str | None,
) -> dict[str, Any]:
    from api.client import Client
    from search.filters import conditions_to_json, parse_filters

    client = Client(ctx.url or "")
    spec = conditions_to_json(parse_filters(filters)) if filters else None
    common: dict[str, Any] = {
        "k": k,
        "filter": spec,
        "group_by": group_by,
        "exclude_same": exclude_same,
    }
    if image is not None:
        res = client.search_image(collection, image, **common)
    elif tile_id is not None:
        res = client.search_tile(collection, tile_id=tile_id, **common)
    else:
        raise click.UsageError(
            "--slide --region is not available through --url; search by --image or --tile-id"
        )
    return res.to_dict()
