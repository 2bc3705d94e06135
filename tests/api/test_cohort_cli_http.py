"""Cohorts, exports and probes over HTTP, and the CLI talking to a server with --url."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from lamina.api.cli import cli

DERM_DIR = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "derm" / "pad_ufes20_subset"
)


@pytest.fixture()
def own_app(derm_home: Path, tmp_path: Path) -> Any:
    from lamina.api.app import create_app

    home = tmp_path / "home"
    shutil.copytree(derm_home / "collections", home / "collections")
    app = create_app({"HOME": str(home), "TESTING": True, "API_TOKEN": None})
    yield app
    state = app.extensions["lamina"]
    if getattr(state, "_catalog", None) is not None:
        state._catalog.close()


def test_cohort_routes(own_app: Any, derm_images: list[Path]) -> None:
    c = own_app.test_client()
    r = c.post(
        "/api/v1/cohorts",
        json={"name": "bcc", "collection": "derm", "filter": {"diagnostic": {"in": ["BCC"]}}},
    )
    assert r.status_code == 200, r.get_json()
    cohort = r.get_json()["cohort"]
    assert cohort["version"] == 1 and cohort["n_tiles"] > 0 and cohort["snapshot"]
    data = {
        "name": "near",
        "collection": "derm",
        "k": "20",
        "near": [(io.BytesIO(derm_images[0].read_bytes()), derm_images[0].name)],
    }
    r = c.post("/api/v1/cohorts", data=data, content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["cohort"]["n_tiles"] == 20
    names = [x["name"] for x in c.get("/api/v1/cohorts").get_json()["cohorts"]]
    assert names == ["bcc", "near"]
    shown = c.get("/api/v1/cohorts/near").get_json()["cohort"]
    assert sum(x["n"] for x in shown["counts"]["per_slide"]) == 20
    assert "diagnostic" in shown["counts"]["per_label"]
    assert c.delete("/api/v1/cohorts/near").get_json() == {"ok": True, "deleted": "near"}
    r = c.get("/api/v1/cohorts/near")
    assert r.status_code == 404 and r.get_json()["code"] == "COHORT_NOT_FOUND"
    r = c.post("/api/v1/cohorts", json={"name": "x", "collection": "derm", "filter": {"nope": 1}})
    assert r.status_code == 422


def finished_job(c: Any, r: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Poll the job a 202 answer names until it ends; -> the final job document."""
    import time

    assert r.status_code == 202, r.get_json()
    job = r.get_json()["job"]
    assert r.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    deadline = time.monotonic() + timeout
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = c.get(f"/api/v1/jobs/{job['id']}").get_json()["job"]
    return job


def test_export_and_probe_routes(own_app: Any) -> None:
    c = own_app.test_client()
    r = c.post(
        "/api/v1/exports",
        json={
            "collection": "derm",
            "label_column": "diagnostic",
            "split_by": "patient_id",
            "cohort": None,
            "test_fraction": 0.2,
            "seed": 1,
            "format": "parquet",
        },
    )
    job = finished_job(c, r)
    assert job["status"] == "done" and job["progress"] == 1.0, job
    assert job["download"] == f"jobs/{job['id']}/file"
    r = c.get("/api/v1/" + job["download"])
    assert r.status_code == 200
    table = pq.read_table(io.BytesIO(r.get_data()))
    meta = json.loads(table.schema.metadata[b"lamina"])
    assert r.headers["X-Lamina-Snapshot"] == meta["snapshot"]
    assert r.headers["X-Lamina-Encoder"] == meta["encoder"] and meta["seed"] == 1
    r = c.post(
        "/api/v1/probes",
        json={
            "collection": "derm",
            "label_column": "diagnostic",
            "split_by": "patient_id",
            "fractions": [0.5, 1],
        },
    )
    job = finished_job(c, r)
    assert job["status"] == "done", job
    report = job["result"]["report"]
    assert [f["fraction"] for f in report["fractions"]] == [0.5, 1.0]
    r = c.post("/api/v1/probes", json={"collection": "derm", "label_column": "nope"})
    assert r.status_code == 422 and "nope" in r.get_json()["error"]
    r = c.post(
        "/api/v1/probes", json={"collection": "derm", "label_column": "diagnostic", "seed": -1}
    )
    assert r.status_code == 422 and "seed" in r.get_json()["error"]


def test_cli_through_server(
    own_app: Any, live_server: Any, tmp_path: Path, derm_images: list[Path]
) -> None:
    with live_server(own_app) as srv:
        env = {"LAMINA_URL": srv.url}
        home = str(tmp_path / "unused-home")

        def run(*args: str) -> str:
            res = CliRunner().invoke(cli, ["--home", home, *args], env=env, catch_exceptions=False)
            assert res.exit_code == 0, res.output
            return res.stdout

        made = json.loads(
            run(
                "cohort",
                "create",
                "c1",
                "--collection",
                "derm",
                "--near",
                str(derm_images[1]),
                "--k",
                "10",
                "--json",
            )
        )
        assert made["cohort"]["n_tiles"] == 10
        assert json.loads(run("cohort", "list", "--json"))["cohorts"][0]["name"] == "c1"
        shown = json.loads(run("cohort", "show", "c1", "--json"))["cohort"]
        assert sum(x["n"] for x in shown["counts"]["per_slide"]) == 10
        out = tmp_path / "remote.parquet"
        run(
            "export",
            "--collection",
            "derm",
            "--cohort",
            "c1",
            "--label-column",
            "diagnostic",
            "--out",
            str(out),
        )
        assert pq.read_table(out).num_rows == 10
        doc = json.loads(
            run(
                "probe",
                "--collection",
                "derm",
                "--label-column",
                "diagnostic",
                "--fractions",
                "1",
                "--json",
            )
        )
        assert doc["ok"] and len(doc["fractions"]) == 1
        run("cohort", "delete", "c1")
        assert not (tmp_path / "unused-home" / "catalog").exists()
