"""What ``lamina index`` checks before it embeds anything: the paths, the manifest, the match;
and the roots it declares (``search.roots``).

The files are discovered, the manifest read (types inferred or declared) and matched to them;
the result is the *plan*: counts of photos and slides, the manifest's columns and types, how
many files match a row, which files match none and which rows match no file. ``--dry-run``
prints the plan and stops (nothing is written to the store). A run where more than
:data:`UNMATCHED_LIMIT` of the files match no manifest row stops here too, with exit code 2,
unless ``--allow-unmatched`` is given: a wrong manifest (or source column) would otherwise
index every file without its metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from lamina.api.cli import emit_json

UNMATCHED_LIMIT = 0.5
SHOWN = 10


def manifest_type_options(fn: Any) -> Any:
    """``--column-type`` and ``--na-values``: how a manifest is read (index and annotate)."""
    fn = click.option(
        "--na-values",
        default=None,
        metavar="LIST",
        help="Comma-separated manifest values read as missing, ignoring case (default "
        "NA,N/A,NaN,unknown,UNK,none,null,-; an empty field is always missing).",
    )(fn)
    return click.option(
        "--column-type",
        "column_types",
        multiple=True,
        metavar="COLUMN=TYPE",
        help="Type of a manifest column (int, float, bool, date, text) instead of the inferred "
        "one; repeatable.",
    )(fn)


def fail(as_json: bool, code: str, message: str, **extra: Any) -> NoReturn:
    """Print ``error: message`` (and the JSON error document with ``--json``); exit 2."""
    if as_json:
        emit_json({"ok": False, "code": code, "error": message, **extra})
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def check_paths(paths: tuple[str, ...], as_json: bool) -> None:
    """Every path given must exist: a missing one is a usage error (exit 2) naming it."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        names = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        fail(as_json, "PATH_NOT_FOUND", f"no such file or directory: {names}", missing=missing)


def _root(root_spec: str) -> tuple[str, Path]:
    name, sep, folder = root_spec.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise click.UsageError(f"--root {root_spec!r}: write NAME=PATH")
    return name.strip(), Path(folder.strip()).resolve()


def check_root(paths: tuple[str, ...], root_spec: str | None) -> None:
    """``--root NAME=PATH``: PATH is a folder holding every path of the run (usage error)."""
    if root_spec is None:
        return
    name, folder = _root(root_spec)
    if not folder.is_dir():
        raise click.UsageError(f"--root {name}={folder}: not a folder")
    outside = [p for p in paths if not Path(p).resolve().is_relative_to(folder)]
    if outside:
        raise click.UsageError(f"--root {name}={folder} does not hold {outside[0]}")


def declare_roots(home: Path, paths: tuple[str, ...], root_spec: str | None) -> list[str]:
    """Declare the run's roots in the home (``search.roots``): ``--root NAME=PATH``, else each
    indexed folder (a file's own folder) unless a root already holds it. Their names."""
    from lamina.search.roots import Roots

    roots = Roots.of(home)
    if root_spec is not None:
        name, folder = _root(root_spec)
        return [roots.declare(folder, name)]
    folders = {Path(p).resolve() if Path(p).is_dir() else Path(p).resolve().parent for p in paths}
    return sorted({roots.declare(f) for f in sorted(folders)})


def make_plan(paths: list[str], manifest: Any) -> dict[str, Any]:
    """The run's files and, with a manifest, how they match it (nothing read but names)."""
    from lamina.indexer.sources import discover

    files, problems = discover(paths)
    doc: dict[str, Any] = {
        "files": len(files),
        "photos": sum(f.kind == "photo" for f in files),
        "slides": sum(f.kind == "slide" for f in files),
        "problems": [{"file": p, "reason": r} for p, r in problems],
    }
    if manifest is not None:
        doc["manifest"] = manifest.report()
        doc["match"] = manifest.match_report(f.path for f in files).to_dict()
    return doc


def mostly_unmatched(plan: dict[str, Any]) -> bool:
    match = plan.get("match")
    if not match or not match["files"]:
        return False
    return len(match["unmatched_files"]) > UNMATCHED_LIMIT * match["files"]


def print_plan(plan: dict[str, Any], out: Any = None) -> None:
    """The plan as text (the ``--json`` document holds every file and row)."""
    out = out or sys.stdout
    say = lambda text: print(text, file=out)  # noqa: E731
    say(f"{plan['files']} files ({plan['photos']} photos, {plan['slides']} slides)")
    for p in plan["problems"]:
        say(f"  not indexable: {p['file']}: {p['reason']}")
    if "manifest" not in plan:
        return
    m, match = plan["manifest"], plan["match"]
    sep = {"\t": "tab", None: "-"}.get(m.get("delimiter"), repr(m.get("delimiter")))
    say(
        f"manifest {m['file']}: {m['rows']} rows, {m['format']}"
        + (f", separator {sep}, {m['encoding']}" if m["format"] != "parquet" else "")
    )
    for c in m["columns"]:
        how = "declared" if c["declared"] else "inferred"
        nulls = f", {c['nulls']} null" if c["nulls"] else ""
        say(f"  {c['name']}: {c['type']} ({how}{nulls})")
    for w in m["warnings"]:
        say(f"  warning: {w}")
    for old, new in (m.get("renamed") or {}).items():
        say(f"  column {old} is stored as {new} (a name the store uses)")
    say(
        f"match on column {m['source_column']}: {match['matched']} of {match['files']} files "
        f"match a row"
        + (f" ({match['case_insensitive']} ignoring case)" if match["case_insensitive"] else "")
    )
    _listed(say, "files match no row", match["unmatched_files"], lambda f: f)
    _listed(
        say,
        "rows match no file",
        match["unmatched_rows"],
        lambda r: f"line {r['line']}: {r['value']}",
    )
    _listed(
        say,
        "files match several rows",
        match["ambiguous"],
        lambda a: f"{a['file']} (lines {', '.join(map(str, a['lines']))})",
    )


def _listed(say: Any, what: str, items: list[Any], show: Any) -> None:
    if not items:
        return
    say(f"  {len(items)} {what}:")
    for item in items[:SHOWN]:
        say(f"    {show(item)}")
    if len(items) > SHOWN:
        say(f"    ... and {len(items) - SHOWN} more (all of them with --json)")
