"""Column roles of a collection: which metadata column names the patient, the case, the lesion.

A collection declares them in ``collection.json`` (``patient_column``, ``case_column``,
``lesion_column``; a column name or null) when it is indexed (``lamina index --patient-column
COL``) or later (``PATCH /collections/{c}``, ``lamina collection columns C --patient-column COL``).
Declaring checks the name against the columns the collection has (or its manifest brings);
nothing is re-embedded or rewritten.

Resolution (one place, used by group-by, exclude-same, splits of probes and exports, cohort
counts and the collection's description): a role's column is the declared one when the
collection has that column; the patient role alone falls back to a column literally named
``patient_id`` when nothing is declared. A declared column the collection does not (yet) have
resolves to None, and a group-by on its role names the fix.

Group keys (:func:`group_column`): ``slide`` / ``source`` (the source file: ``source_id``),
``patient`` / ``case`` / ``lesion`` (the role's column), or any metadata column by name.
"""

from __future__ import annotations

import json
from collections.abc import Collection as Names
from collections.abc import Iterable, Mapping
from typing import Any

from lamina.search.errors import InvalidQueryError
from lamina.search.segments import write_json_atomic
from lamina.search.store import Collection, seal

ROLES = ("patient", "case", "lesion")
PATIENT_FALLBACK = "patient_id"
SLIDE_KEYS = ("slide", "source")
SOURCE_COLUMN = "source_id"


def key_of(role: str) -> str:
    """The ``collection.json`` key of a role (``patient`` -> ``patient_column``)."""
    if role not in ROLES:
        raise InvalidQueryError(f"unknown column role {role!r}; roles: {', '.join(ROLES)}")
    return f"{role}_column"


def declared(col: Collection) -> dict[str, str | None]:
    """The declared column of every role (None where none is declared)."""
    out: dict[str, str | None] = {}
    for role in ROLES:
        value = col.info.get(key_of(role))
        out[role] = str(value) if value else None
    return out


def resolve(col: Collection, columns: Names[str], role: str) -> str | None:
    """The column of ``role`` among ``columns`` (see the module docstring), or None."""
    name = declared(col)[role]
    if name is None and role == "patient":
        name = PATIENT_FALLBACK
    return name if name is not None and name in columns else None


def role_columns(col: Collection, columns: Names[str]) -> dict[str, str | None]:
    """``{"patient_column": ..., "case_column": ..., "lesion_column": ...}`` as resolved."""
    return {key_of(role): resolve(col, columns, role) for role in ROLES}


def patient_column(view: Any) -> str | None:
    """The patient column of a view's collection (None when it has none)."""
    return resolve(view.collection, view.schema, "patient")


def _fix(name: str, role: str) -> str:
    return f"declare it: `lamina collection columns {name} --{role}-column COL`"


def group_column(view: Any, group_by: str) -> str:
    """The column a ``group_by`` key names (see the module docstring); InvalidQueryError
    naming the collection's columns (or the way to declare a role) otherwise."""
    name = view.collection.name
    if group_by in SLIDE_KEYS:
        return SOURCE_COLUMN
    if group_by in ROLES:
        found = resolve(view.collection, view.schema, group_by)
        if found is not None:
            return found
        if group_by in view.metadata_columns:  # a column literally named so
            return group_by
        said = declared(view.collection)[group_by]
        if said is not None:
            raise InvalidQueryError(
                f"group_by={group_by}: the declared {group_by} column {said!r} is not a column "
                f"of collection {name!r} (columns: {', '.join(view.metadata_columns) or 'none'}); "
                + _fix(name, group_by)
            )
        extra = f" and it has no {PATIENT_FALLBACK!r} column" if group_by == "patient" else ""
        raise InvalidQueryError(
            f"group_by={group_by}: collection {name!r} declares no {group_by} column{extra}; "
            + _fix(name, group_by)
            + f", or group by a column by name ({', '.join(view.metadata_columns) or 'none'})"
        )
    if group_by in view.metadata_columns:
        return group_by
    raise InvalidQueryError(
        f"group_by: {group_by!r} is not a column of collection {name!r}; group by slide, "
        f"patient, case, lesion or one of its metadata columns: "
        f"{', '.join(view.metadata_columns) or 'none'}"
    )


def column_by_name(view: Any, column: str, what: str) -> str:
    """``column`` itself, or the column of a role named by it (``patient`` -> the patient
    column), checked against the view's metadata columns. ``what`` names the option."""
    if column in ROLES and column not in view.metadata_columns:
        found = resolve(view.collection, view.schema, column)
        if found is None:
            raise InvalidQueryError(
                f"{what}={column}: collection {view.collection.name!r} has no {column} column; "
                + _fix(view.collection.name, column)
            )
        return found
    if column not in view.schema:
        raise InvalidQueryError(
            f"{what}: {column!r} is not a column of collection {view.collection.name!r}; "
            f"metadata columns: {', '.join(view.metadata_columns) or 'none'}"
        )
    return column


IMAGE_SPLIT = "image"
IMAGE_SPLIT_WARNING = (
    "split by image: {patient_note}tiles or photos of one {unit} can land in both train and "
    "test, so scores may be inflated; split by a patient column (--split-by COL) where the data "
    "has one"
)


def split_column(view: Any, split_by: str | None) -> tuple[str | None, list[str]]:
    """(the column whose groups go wholly to train or test, warnings) for a ``split_by``:
    None -> the patient column when there is one, else by image with a warning;
    ``image`` -> by image (with the same warning; ``image`` never names a column here); a role
    (``patient``...) or a metadata column by name."""
    pcol = patient_column(view)
    if split_by is None or split_by == "":
        if pcol is not None:
            return pcol, []
        split_by = IMAGE_SPLIT
    if split_by == IMAGE_SPLIT:
        note = (
            f"the collection has a patient column ({pcol!r}) but "
            if pcol is not None
            else "the collection declares no patient column, so "
        )
        return None, [IMAGE_SPLIT_WARNING.format(patient_note=note, unit="patient")]
    return column_by_name(view, split_by, "split_by"), []


def check_names(
    col: Collection, roles: Mapping[str, str | None], known: Iterable[str]
) -> dict[str, str | None]:
    """``roles`` (role -> column or None) checked: known roles, columns among ``known``."""
    names = set(known)
    out: dict[str, str | None] = {}
    for role, column in roles.items():
        key_of(role)
        if column in (None, ""):
            out[role] = None
            continue
        if not isinstance(column, str):
            raise InvalidQueryError(f"{role}_column must be a column name or null")
        if column not in names:
            raise InvalidQueryError(
                f"{role}_column: {column!r} is not a column of collection {col.name!r}; "
                f"metadata columns: {', '.join(sorted(names)) or 'none'}"
            )
        out[role] = column
    return out


def declare(
    col: Collection, roles: Mapping[str, str | None], known: Iterable[str]
) -> dict[str, str | None]:
    """Store the given roles' columns (None clears a role) after :func:`check_names`; other
    roles keep theirs. Returns every role's declared column."""
    checked = check_names(col, roles, known)
    if not checked:
        return declared(col)
    info_path = col.path / "collection.json"
    info = json.loads(info_path.read_text())
    for role, column in checked.items():
        info[key_of(role)] = column
    write_json_atomic(info_path, seal(info))
    col.info = info
    return declared(col)


def roles_for_ingest(
    store: Any, name: str, roles: Mapping[str, str | None], incoming: Iterable[str]
) -> dict[str, str]:
    """The roles given to ``lamina index`` (None: not given), checked before anything is
    created or embedded: each column must be one the run brings (``incoming``: the manifest's
    columns) or one collection ``name`` already has. Declare them with :func:`declare` once
    the collection is open."""
    from lamina.search.errors import CollectionNotFoundError
    from lamina.search.views import CollectionView

    given = {role: column for role, column in roles.items() if column}
    if not given:
        return {}
    known = set(incoming)
    try:
        col = store.collection(name)
    except CollectionNotFoundError:
        col = None
    if col is not None:
        known |= set(CollectionView(col, col.snapshot()).metadata_columns)
    for role, column in given.items():
        key_of(role)
        if column not in known:
            where = "the manifest" if col is None else f"the manifest or collection {name!r}"
            raise InvalidQueryError(
                f"--{role}-column {column}: no such column in {where}; columns: "
                f"{', '.join(sorted(known)) or 'none (give --manifest)'}"
            )
    return given
