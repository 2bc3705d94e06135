"""POST /exports with ``"format": "trident-h5"``: one TRIDENT ``.h5`` per slide, as one zip.

A background job (api/jobs.py) writes the files with :func:`search.trident.write_trident` into
its work folder and zips them (stored, not deflated: float32 features barely compress); the
client downloads ``/jobs/{id}/file`` and unpacks it. Fields: ``collection`` (required),
``cohort`` (only its members), ``label_column`` (optional: a ``label`` column in
``slides.csv``). File names follow the slide names the caller may see (``SOURCE_PATHS``
policy), never the server's paths. The export is recorded in the catalog like the others.
"""

from __future__ import annotations

import secrets
import zipfile
from typing import Any

from flask import Response

from lamina.api.app import state
from lamina.api.jobs import Job


def create_trident_export(fields: dict[str, Any]) -> Response:
    from lamina.api.exposure import source_namer
    from lamina.api.routes.cohorts import _str
    from lamina.api.routes.jobs import submit
    from lamina.search.catalog import now_utc
    from lamina.search.trident import TRIDENT_FORMAT, _h5py, write_trident

    for unused in ("split_by", "neighbors"):
        if fields.get(unused) not in (None, ""):
            from lamina.api.routes.cohorts import _invalid

            raise _invalid(f"{unused} does not apply to format trident-h5 (features per slide)")
    _h5py()  # refused before queueing when the server cannot write HDF5
    st = state()
    view = st.service.view(_str(fields.get("collection"), "collection", required=True) or "")
    cohort = _str(fields.get("cohort"), "cohort")
    label_column = _str(fields.get("label_column"), "label_column")
    if label_column is not None and label_column not in view.schema:
        from lamina.api.routes.cohorts import _invalid

        known = ", ".join(view.metadata_columns)
        raise _invalid(f"unknown label column {label_column!r}; metadata columns: {known}")
    catalog = st.catalog()
    namer = source_namer()
    name = view.collection.name

    def run(job: Job) -> dict[str, Any]:
        from lamina.search.cohorts import cohort_tile_ids

        tile_ids, record = None, None
        if cohort is not None:
            tile_ids, record = cohort_tile_ids(
                catalog, cohort, view.collection.name, view.collection.uuid
            )
        job.report(0.02, "writing one .h5 per slide")
        folder = job.workdir / "trident"
        done = write_trident(
            view,
            folder,
            tile_ids=tile_ids,
            label_column=label_column,
            source_name=namer,
            progress=lambda f, m: job.report(0.02 + 0.9 * f, m),
        )
        out = job.workdir / "trident.zip"
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for f in sorted(folder.iterdir()):
                zf.write(f, f.name)
        entry = {
            "id": secrets.token_hex(8),
            "collection": name,
            "cohort": cohort,
            "cohort_version": None if record is None else record["version"],
            "args": {"format": TRIDENT_FORMAT, "cohort": cohort, "label_column": label_column},
            "snapshot": view.snapshot.id,
            "encoder": view.collection.fingerprint,
            "rows": done["n_tiles"],
            "sha256": None,
            "path": None,
            "created_at": now_utc(),
        }
        catalog.record_export(entry)
        job.file, job.file_type = out, "application/zip"
        job.file_name = f"{name}.trident.zip"
        job.file_headers = {
            "X-Lamina-Snapshot": str(view.snapshot.id),
            "X-Lamina-Encoder": str(view.collection.fingerprint),
            "X-Lamina-Export-Id": entry["id"],
        }
        return {"export": entry, "meta": done, "n_bytes": out.stat().st_size}

    return submit("export", run, name)
