"""Collection-management calls of :class:`lamina.api.client.Client`: column roles, index
settings, compaction, metadata corrections, deletions, dropping a collection, the home's roots
and imports of precomputed embeddings (most need the admin or write scope). Standard library
only."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lamina.api.client_base import ClientBase
from lamina.api.client_http import _file, _multipart, _q
from lamina.api.client_jobs import Progress, accepted_job, wait_for_job


class AdminMixin(ClientBase):
    """Collection settings, maintenance, corrections, roots and imports."""

    # -- collection settings -----------------------------------------------------------------
    def collection_columns(self, name: str) -> dict[str, Any]:
        """The declared patient / case / lesion columns, what they resolve to, and the
        metadata columns with their types."""
        return dict(self._json("GET", f"/collections/{_q(name)}/columns")["collection"])

    def set_collection_columns(self, name: str, **roles: str | None) -> dict[str, Any]:
        """Declare column roles (admin scope): ``patient_column=``, ``case_column=``,
        ``lesion_column=`` (a metadata column, or None to clear it); others keep theirs.
        Returns the new state as :meth:`collection_columns` does."""
        path = f"/collections/{_q(name)}/columns"
        return dict(self._json("PUT", path, json_body=dict(roles))["collection"])

    def collection_index(self, name: str) -> dict[str, Any]:
        """Index factory, stored/effective search parameters, dtype and index coverage."""
        return dict(self._json("GET", f"/collections/{_q(name)}/index")["collection"])

    def set_collection_index(
        self,
        name: str,
        index_factory: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store a new index factory and/or default search parameters (admin scope); vectors
        are never touched. Returns the new settings as :meth:`collection_index` does."""
        body = {"index_factory": index_factory, "params": dict(params) if params else None}
        return dict(
            self._json(
                "PUT",
                f"/collections/{_q(name)}/index",
                json_body={k: v for k, v in body.items() if v is not None},
            )["collection"]
        )

    def compact(
        self,
        name: str,
        target_rows: int | None = None,
        progress: Progress | None = None,
        erase: bool = False,
        retrain_index: bool = False,
    ) -> dict[str, Any]:
        """Merge ``name``'s small segments (a server job; waits for it): the summary. Segments
        holding deleted rows are always written again without them; ``erase`` also removes the
        replaced files at once (no grace period); ``retrain_index`` (with ``erase``) trains the
        ANN index again without the deleted vectors."""
        body: dict[str, Any] = {} if target_rows is None else {"target_rows": int(target_rows)}
        if erase:
            body["erase"] = True
        if retrain_index:
            body["retrain_index"] = True
        _, _, data = self._raw("POST", f"/collections/{_q(name)}/compact", json_body=body)
        return dict(wait_for_job(self, accepted_job(data), progress)["result"])

    # -- correcting and deleting data --------------------------------------------------------
    def annotate(
        self,
        collection: str,
        manifest: str | Path,
        *,
        source_column: str = "file",
        column_types: Sequence[str] | None = None,
        na_values: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Update the metadata of ``collection``'s sources from ``manifest`` without
        re-embedding (a server job; waits for it). The result lists every changed source with
        ``changes`` {column: {old, new}}; unchanged sources are not touched."""
        fields = {
            "source_column": source_column,
            "column_type": ",".join(column_types) if column_types else None,
            "na_values": na_values,
        }
        body, ctype = _multipart(fields, [("manifest", *_file(manifest))])
        _, _, data = self._raw(
            "POST", f"/collections/{_q(collection)}/annotate", body=body, content_type=ctype
        )
        return dict(wait_for_job(self, accepted_job(data), progress)["result"])

    def delete_sources(
        self,
        collection: str,
        sources: Sequence[str] = (),
        filter: str | Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Delete whole sources (names, paths or source ids, and/or every source with a tile
        matching ``filter``): gone from searches at once, erased from disk by the next
        compaction. Returns the deleted sources with their tile counts (``dry_run``: what
        would be deleted; nothing is)."""
        body: dict[str, Any] = {"sources": list(sources)}
        if dry_run:
            body["dry_run"] = True
        if filter is not None:
            body["filter"] = filter if isinstance(filter, str) else dict(filter)
        _, _, data = self._raw("POST", f"/collections/{_q(collection)}/delete", json_body=body)
        if dry_run:
            return dict(json.loads(data))
        return dict(wait_for_job(self, accepted_job(data))["result"])

    def drop_collection(self, name: str) -> dict[str, Any]:
        """Remove collection ``name`` with its cohorts and export records (admin scope)."""
        return self._json("DELETE", f"/collections/{_q(name)}", query={"confirm": name})

    # -- roots: where the source folders live -------------------------------------------------
    def roots(self) -> dict[str, Any]:
        """The home's roots: name, whether the folder exists, moves; and the version (admin)."""
        return self._json("GET", "/roots")

    def relocate(
        self, to: str, root: str | None = None, from_path: str | None = None
    ) -> dict[str, Any]:
        """Root ``root`` (or the folder ``from_path``, as indexed) now lives at ``to``, a
        folder on the server (admin scope). Nothing is re-embedded. Returns the root's name,
        the version, how many sources are under it and how many were found at ``to``."""
        body: dict[str, Any] = {"to": to}
        if root is not None:
            body["root"] = root
        if from_path is not None:
            body["from"] = from_path
        return self._json("POST", "/roots/relocate", json_body=body)

    # -- imports: bring your own embeddings --------------------------------------------------
    def import_embeddings(
        self,
        collection: str,
        files: Sequence[str | Path] | str | Path,
        encoder_name: str,
        dim: int | None = None,
        *,
        table_source_column: str | None = None,
        vector_column: str | None = None,
        patch_px_level0: int | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload precomputed embeddings (.h5, .parquet, .npz, .json) into ``collection``, bound
        to ``encoder_name`` (``external/<name>`` with ``dim``, or a registered key). Returns
        the run report; a file that fails a check raises :class:`InvalidRequest` (422) naming
        it and the row. Re-sending the same files imports nothing twice."""
        paths = [files] if isinstance(files, str | Path) else list(files)
        fields = {
            "encoder_name": encoder_name,
            "dim": dim,
            "table_source_column": table_source_column,
            "vector_column": vector_column,
            "patch_px_level0": patch_px_level0,
        }
        body, ctype = _multipart(fields, [("file", *_file(p)) for p in paths])
        _, _, data = self._raw(
            "POST", f"/collections/{_q(collection)}/import", body=body, content_type=ctype
        )
        return dict(wait_for_job(self, accepted_job(data), progress)["result"])
