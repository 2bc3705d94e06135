"""`lamina qc`: a slide's QC picture and GeoJSON (tissue contour, kept and rejected tiles).

One path: both files come from the API (``ctx.client()``: a server with ``--url``, else the
in-process app on the local store), ``GET .../sources/{id}/qc.png`` and ``.../qc.geojson``.
A slide given as a file is found by its content (the sha256 that is its source id), so the
same command works on the machine that indexed it and on any other holding the same file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from lamina.api.cli import CliContext, emit_json, handle_errors

_SOURCE_ID = re.compile(r"^[0-9a-f]{64}$")


def resolve_source(slide: str) -> tuple[str, str | None]:
    """(source id, file stem or None) of SLIDE_OR_SOURCE_ID: an existing file is hashed."""
    path = Path(slide)
    if path.is_file():
        from lamina.indexer.sources import content_id

        return content_id(path=path), path.stem
    if _SOURCE_ID.match(slide.lower()):
        return slide.lower(), None
    raise click.UsageError(
        f"{slide!r} is neither a slide file here nor a source id (64 hex characters, as "
        "search answers and `lamina status` show them)"
    )


def register(cli: click.Group) -> None:
    @cli.command("qc")
    @click.argument("slide", metavar="SLIDE_OR_SOURCE_ID")
    @click.option("--collection", required=True, help="Collection the slide was indexed into.")
    @click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("."),
        show_default=True,
        help="Folder for NAME.qc.png and NAME.qc.geojson (created if missing).",
    )
    @click.option(
        "--size",
        type=click.IntRange(64, 4096),
        default=1024,
        show_default=True,
        help="Longest side of the picture in pixels.",
    )
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def qc_command(
        ctx: CliContext, slide: str, collection: str, out: Path, size: int, as_json: bool
    ) -> None:
        """Write the slide's QC picture and its GeoJSON (QuPath opens it: File > Import
        objects): tissue polygons and every grid tile, kept or rejected, in level-0 pixels."""
        source_id, stem = resolve_source(slide)
        client = ctx.client()
        geo = client.slide_qc_geojson(collection, source_id)
        png = client.slide_qc_png(collection, source_id, size=size)
        info: dict[str, Any] = dict(geo.get("lamina") or {})
        name = stem or Path(str(info.get("name") or "")).stem or source_id[:12]
        out.mkdir(parents=True, exist_ok=True)
        png_path, geo_path = out / f"{name}.qc.png", out / f"{name}.qc.geojson"
        _write(png_path, png)
        _write(geo_path, json.dumps(geo, separators=(",", ":")).encode())
        doc = {
            "ok": True,
            "collection": collection,
            "source_id": source_id,
            "png": str(png_path),
            "geojson": str(geo_path),
            "qc": info,
        }
        if as_json:
            emit_json(doc)
            return
        click.echo(
            f"{name}: {info.get('kept_tiles')} kept / {info.get('rejected_tiles')} rejected of "
            f"{info.get('grid_tiles')} grid tiles, tissue {float(info.get('tissue_fraction') or 0):.1%}"
        )
        click.echo(f"wrote {png_path} and {geo_path}")


def _write(path: Path, data: bytes) -> None:
    """Through a temporary file and a rename: never half a file."""
    import os
    import secrets

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
