"""`lamina probe`: logistic-regression probes and retrieval metrics (see search/probes.py).

One path: the probe runs as a job of the API through ``ctx.client()`` (a server with ``--url``,
else the in-process app); the printed table and ``--json`` are the job's report either way.
"""

from __future__ import annotations

from typing import Any

import click

from lamina.api.cli import CliContext, emit_json, handle_errors


def parse_fractions(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected numbers like 0.125,0.25,0.5,1, got {text!r}", param_hint="--fractions"
        ) from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise click.BadParameter("fractions must be in (0, 1]", param_hint="--fractions")
    return values


def _fmt(m: dict[str, Any]) -> str:
    if m.get("value") is None:
        return "n/a".ljust(22)
    if m.get("ci_low") is None:
        return f"{m['value']:.3f}".ljust(22)
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def print_report(r: dict[str, Any]) -> None:
    click.echo(f"collection {r['collection']}  snapshot {r['snapshot']}  encoder {r['encoder']}")
    click.echo(
        f"label {r['label_column']}  split by {r['split_by'] or 'image'}  "
        f"train {r['n_train']}  test {r['n_test']}  classes {', '.join(r['classes'])}"
    )
    click.echo(
        f"{'fraction':>8} {'groups':>6} {'n':>6}  {'AUROC [95% CI]':<22}  "
        f"{'accuracy':<22}  {'balanced accuracy':<22}"
    )
    for f in r["fractions"]:
        click.echo(
            f"{f['fraction']:>8.3f} {f['n_train_groups']:>6} {f['n_train']:>6}  "
            f"{_fmt(f['auroc'])}  {_fmt(f['accuracy'])}  {_fmt(f['balanced_accuracy'])}"
        )
    ret = r["retrieval"]
    click.echo(
        "retrieval: "
        + "  ".join(f"{k}={'n/a' if v is None else f'{v:.3f}'}" for k, v in ret.items())
    )


def register(cli: click.Group) -> None:
    @cli.command("probe")
    @click.option("--collection", required=True)
    @click.option("--label-column", required=True)
    @click.option("--cohort", default=None, help="Only the members of this cohort.")
    @click.option(
        "--split-by",
        default=None,
        help="Column whose groups go wholly to train or test (default: the patient column "
        "when there is one); 'image' splits by image (scores may be inflated).",
    )
    @click.option(
        "--fractions",
        default="0.125,0.25,0.5,1",
        show_default=True,
        help="Fractions of the training groups to train on.",
    )
    @click.option(
        "--test-fraction",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=0.2,
        show_default=True,
    )
    @click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def probe_command(
        ctx: CliContext,
        collection: str,
        label_column: str,
        cohort: str | None,
        split_by: str | None,
        fractions: str,
        test_fraction: float,
        seed: int,
        as_json: bool,
    ) -> None:
        """Linear probe (AUROC, accuracy, balanced accuracy with 95% CIs) + retrieval metrics."""
        fracs = parse_fractions(fractions)
        from lamina.api.client_jobs import stderr_progress

        report = (
            ctx.client()
            .probe(
                collection,
                label_column,
                cohort=cohort,
                split_by=split_by,
                fractions=fracs,
                seed=seed,
                test_fraction=test_fraction,
                progress=stderr_progress("probe"),
            )
            .data
        )
        for warning in report.get("warnings") or []:
            click.echo(f"warning: {warning}", err=True)
        if as_json:
            emit_json(report)
        else:
            print_report(report)
