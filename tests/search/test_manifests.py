"""The manifest reader on files as they come: ragged, BOM + ';' + CRLF, TSV, Parquet, NA markers."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lamina.search.errors import ManifestFormatError
from lamina.search.manifests import parse_column_types, parse_na_values, read_manifest


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_ragged_rows_short_padded_long_refused(tmp_path: Path) -> None:
    f = _write(tmp_path / "ragged.csv", "file,age,site\na.jpg,12,arm\nb.jpg,30\nc.jpg\n")
    t = read_manifest(f)
    assert t.rows[1] == {"file": "b.jpg", "age": 30, "site": None}
    assert t.rows[2] == {"file": "c.jpg", "age": None, "site": None}
    assert t.types == {"file": "text", "age": "int", "site": "text"}
    assert any("padded with nulls" in w for w in t.warnings)
    # trailing empty fields (a spreadsheet's trailing separators) are dropped
    f = _write(tmp_path / "trailing.csv", "file,age,\na.jpg,12,,\nb.jpg,3,\n")
    assert read_manifest(f).rows == [{"file": "a.jpg", "age": 12}, {"file": "b.jpg", "age": 3}]
    # a longer row with values: its fields would be shifted, so it is an error naming the line
    f = _write(tmp_path / "long.csv", "file,age,site\na.jpg,12,arm\nb.jpg,30,arm,left\n")
    with pytest.raises(ManifestFormatError) as info:
        read_manifest(f)
    msg = str(info.value)
    assert "long.csv, line 3" in msg and "4 fields" in msg and "'left'" in msg
    assert "duckdb" not in msg.lower() and len(msg.splitlines()) == 1


def test_excel_export_bom_semicolon_crlf_quotes(tmp_path: Path) -> None:
    text = (
        "\ufefffile;age;site;note\r\n"
        'a.jpg;12;"arm; left";"said ""hi"""\r\n'
        'b.jpg;N/A;leg;"two\r\nlines"\r\n'
        "c.jpg;7;back;-\r\n"
    )
    t = read_manifest(_write(tmp_path / "excel.csv", text))
    assert t.columns == ["file", "age", "site", "note"]  # no BOM in the first name
    assert t.delimiter == ";" and t.encoding == "utf-8"
    assert t.rows[0] == {"file": "a.jpg", "age": 12, "site": "arm; left", "note": 'said "hi"'}
    assert t.rows[1]["note"] == "two\r\nlines" and t.rows[1]["age"] is None
    assert t.rows[2]["note"] is None
    assert t.lines == [2, 3, 5]  # the quoted line break counts
    # Windows-1252 (what Excel writes without the UTF-8 option) is read and said
    t = read_manifest(_write(tmp_path / "cp.csv", "file;site\na.jpg;épaule\n", "cp1252"))
    assert t.rows[0]["site"] == "épaule" and t.encoding == "cp1252"


def test_tsv_and_errors_name_line_and_column(tmp_path: Path) -> None:
    f = _write(tmp_path / "m.tsv", "file\tage\tscore\na,b.jpg\t40\t0.5\nc.jpg\tunknown\t1e-3\n")
    t = read_manifest(f)
    assert t.format == "tsv" and t.rows[0]["file"] == "a,b.jpg"
    assert t.types["age"] == "int" and t.types["score"] == "float" and t.rows[1]["age"] is None
    with pytest.raises(ManifestFormatError, match=r"m\.tsv, line 2, column 'score': '0.5'"):
        read_manifest(f, column_types={"score": "int"})
    assert read_manifest(f, column_types={"age": "text"}).rows[0]["age"] == "40"
    with pytest.raises(ManifestFormatError, match="names nope"):
        read_manifest(f, column_types={"nope": "int"})


def test_na_markers_keep_numeric_columns_numeric(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "na.csv",
        "file,age,size\na,NA,1.5\nb,n/a,2\nc,Unknown,NaN\nd,NULL,\ne,none,-\nf,12,3\ng,-,4\n",
    )
    t = read_manifest(f)
    assert t.types == {"file": "text", "age": "int", "size": "float"}
    assert [r["age"] for r in t.rows] == [None] * 5 + [12, None]
    assert all(isinstance(r["age"], int | type(None)) for r in t.rows)
    report = {c["name"]: c for c in t.report()["columns"]}
    assert report["age"] == {"name": "age", "type": "int", "declared": False, "nulls": 6}
    # --na-values replaces the markers: 'unknown' is then a value, and a number column with a
    # stray word is an error, never a silent change to text
    with pytest.raises(ManifestFormatError, match=r"line 4, column 'age': 'Unknown' is not a"):
        read_manifest(f, na_values=parse_na_values("NA,n/a,null,none,-"))
    f2 = _write(tmp_path / "stray.csv", "file,age\na,1\nb,missing\nc,3\n")
    with pytest.raises(ManifestFormatError, match="--column-type age=text"):
        read_manifest(f2)
    assert read_manifest(f2, na_values=["missing"]).types["age"] == "int"


def test_inferred_types(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "t.csv",
        "file,flag,day,code,ratio,big\n"
        "a,True,2024-01-31,007,3,12345678901234567890\n"
        "b,false,2023-12-01,12,3.0,1\n",
    )
    t = read_manifest(f)
    assert t.types == {
        "file": "text",
        "flag": "bool",
        "day": "date",
        "code": "text",  # a leading zero: an identifier, kept as written
        "ratio": "float",
        "big": "int",
    }
    assert t.rows[0]["code"] == "007" and t.rows[0]["flag"] is True
    assert t.rows[0]["big"] == 12345678901234567890
    assert read_manifest(f, column_types={"ratio": "int"}).rows[1]["ratio"] == 3
    assert parse_column_types(["age=INT", "x = text"]) == {"age": "int", "x": "text"}
    with pytest.raises(ManifestFormatError, match="COLUMN=TYPE"):
        parse_column_types(["age:int"])


def test_parquet_manifest(tmp_path: Path) -> None:
    table = pa.table(
        {
            "file": ["a.jpg", "b.jpg", "c.jpg"],
            "age": pa.array([40, None, 7], pa.int64()),
            "weight": [1.5, float("nan"), 2.0],
            "site": ["arm", "unknown", "NA"],
            "grade": ["1", "2", "N/A"],
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    t = read_manifest(tmp_path / "m.parquet")
    assert t.format == "parquet"
    assert t.types == {"file": "text", "age": "int", "weight": "float", "site": "text",
                       "grade": "int"}  # fmt: skip
    assert [r["age"] for r in t.rows] == [40, None, 7]
    assert [r["weight"] for r in t.rows] == [1.5, None, 2.0]
    assert [r["site"] for r in t.rows] == ["arm", None, None]
    assert [r["grade"] for r in t.rows] == [1, 2, None]
    with pytest.raises(ManifestFormatError, match=r"m\.parquet, row 1, column 'site'"):
        read_manifest(tmp_path / "m.parquet", column_types={"site": "float"})


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ManifestFormatError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(ManifestFormatError, match="save the sheet as CSV"):
        read_manifest(_write(tmp_path / "m.xlsx", "PK"))
    with pytest.raises(ManifestFormatError, match="is empty"):
        read_manifest(_write(tmp_path / "e.csv", "\n\n"))
    with pytest.raises(ManifestFormatError, match="line 1: column names repeat"):
        read_manifest(_write(tmp_path / "d.csv", "file,a,a\nx,1,2\n"))
    with pytest.raises(ManifestFormatError, match="cannot read Parquet"):
        read_manifest(_write(tmp_path / "bad.parquet", "not parquet"))
