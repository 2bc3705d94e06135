"""Hostile HTTP requests for the fuzzer (tests/api/test_openapi_fuzz.py and ``python -m bench.fuzz``).

Method: hypothesis strategies that draw one request at a time from families the OpenAPI
schema alone does not reach: numbers at and past every edge (integers of 64 to 400 bits,
``-1e308``, ``1e309``, NaN, infinities, subnormals, 5,000-digit texts) placed in every numeric
slot (filter values in JSON and EXPR form, vector components, k, seed, tile ids, near_tile_ids,
top_m, region boxes, search params, export/probe numbers, cohort versions); JSON nested up to
5,000 deep as the body and inside multipart ``filter``/``params`` fields; and image uploads
mutated from a real photo (truncated, huge declared dimensions, wrong magic, zero bytes,
random bytes, palette, 16-bit, CMYK, EXIF-rotated, grey, RGBA, 1x1, TIFF, WebP, GIF, BMP).

A request is a :class:`Req`; :func:`to_flask` and :func:`to_requests` send it through the
Flask test client or over HTTP. Invariant checked by both callers: no answer is >= 500.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

EDGE_INTS = [
    0,
    -1,
    1,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    -(2**32),
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64,
    2**127,
    2**128 + 1,
    -(2**200),
    10**40,
    10**120,
]
EDGE_FLOATS = [0.0, -0.0, 1e-320, 5e-324, 1e308, -1e308, 1.7976931348623157e308, 3.5e38, 0.5, -2.5]
EDGE_TEXTS = [
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e309",
    "-1e308",
    "-1e309",
    "9" * 60,
    "9" * 5000,
    "0x10",
    " 12 ",
    "1_000",
    "",
    "1e-400",
    "+7",
    "--1",
    "1.5e3",
    "١٢",
    "null",
]
NUMERIC_COLUMNS = ("age", "diameter_1", "fitspatrick", "diagnostic", "biopsed", "nope")


@dataclass
class Req:
    method: str
    path: str  # under /api/v1
    json_body: Any = None
    raw: bytes | None = None  # sent as application/json text when set
    form: dict[str, str] | None = None
    files: list[tuple[str, str, bytes]] = field(default_factory=list)  # (field, filename, data)
    family: str = ""

    def summary(self) -> str:
        body = self.raw[:80] if self.raw is not None else json.dumps(self.json_body)[:160]
        form = {k: v[:60] for k, v in (self.form or {}).items()}
        files = [(f, n, len(d)) for f, n, d in self.files]
        return f"{self.method} {self.path} [{self.family}] body={body!r} form={form} files={files}"


def numbers() -> st.SearchStrategy[Any]:
    """Any JSON-ish number, an edge one more often than not."""
    return st.one_of(
        st.sampled_from(EDGE_INTS),
        st.sampled_from(EDGE_FLOATS),
        st.integers(min_value=-(2**400), max_value=2**400),
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-5, max_value=2000),
    )


def number_texts() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(EDGE_TEXTS), numbers().map(repr), st.text(max_size=12))


def nested(depth: int, leaf: Any = 1) -> str:
    return "[" * depth + json.dumps(leaf) + "]" * depth


# -- images --------------------------------------------------------------------------------------
def _save(im: Any, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _jpeg_with_size(data: bytes, w: int, h: int) -> bytes:
    """The same JPEG with its SOF frame header declaring w x h."""
    out = bytearray(data)
    i = 2
    while i + 9 < len(out):
        if out[i] != 0xFF:
            break
        marker = out[i + 1]
        seg_len = struct.unpack(">H", out[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            out[i + 5 : i + 9] = struct.pack(">HH", h, w)
            return bytes(out)
        i += 2 + seg_len
    return bytes(out)


def _png_bomb(w: int, h: int) -> bytes:
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def image_pool(photo: bytes) -> dict[str, bytes]:
    """Named image uploads derived from one real photo (deterministic)."""
    from PIL import Image

    im = Image.open(io.BytesIO(photo)).convert("RGB")
    small = im.resize((64, 48))
    big = Image.new("RGB", (7000, 7000), (200, 120, 100))
    big_jpeg = _save(big, "JPEG", quality=10)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    gif = [small.convert("P"), small.rotate(90).convert("P")]
    pool = {
        "photo": photo,
        "zero_bytes": b"",
        "one_byte": photo[:1],
        "truncated_header": photo[:20],
        "truncated_half": photo[: len(photo) // 2],
        "truncated_end_marker": photo[: len(photo) // 3] + b"\xff\xd9",
        "wrong_magic": b"GIF89a" + photo[6:],
        "text_as_jpeg": b"this is not an image\n" * 10,
        "random_bytes": bytes((i * 7919 + 13) % 256 for i in range(4096)),
        "jpeg_declares_7000": big_jpeg[:629] + b"\xff\xd9",
        "jpeg_declares_65535": _jpeg_with_size(photo, 65535, 65535),
        "jpeg_declares_0": _jpeg_with_size(photo, 0, 0),
        "png_declares_100k": _png_bomb(100_000, 100_000),
        "png_declares_3000": _png_bomb(3000, 3000),
        "palette_png": _save(small.convert("P"), "PNG"),
        "png_16bit": _save(small.convert("L").point(lambda v: v * 256).convert("I;16"), "PNG"),
        "cmyk_jpeg": _save(small.convert("CMYK"), "JPEG"),
        "exif_rotated": _save(small, "JPEG", exif=exif),
        "grey": _save(small.convert("L"), "PNG"),
        "rgba": _save(small.convert("RGBA"), "PNG"),
        "one_pixel": _save(Image.new("RGB", (1, 1)), "PNG"),
        "tiff": _save(small, "TIFF"),
        "webp": _save(small, "WEBP"),
        "gif_animated": _save(gif[0], "GIF", save_all=True, append_images=gif[1:]),
        "bmp": _save(small, "BMP"),
    }
    return pool


def image_mutations(pool: dict[str, bytes]) -> st.SearchStrategy[tuple[str, bytes]]:
    """A pooled image, sometimes further cut at a drawn length or with one byte flipped."""

    @st.composite
    def draw(d: Any) -> tuple[str, bytes]:
        name = d(st.sampled_from(sorted(pool)))
        data = pool[name]
        how = d(st.sampled_from(["as_is", "as_is", "cut", "flip"]))
        if how == "cut" and data:
            n = d(st.integers(0, len(data)))
            return f"{name}_cut{n}", data[:n]
        if how == "flip" and data:
            i = d(st.integers(0, len(data) - 1))
            return f"{name}_flip{i}", data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        return name, data

    return draw()


# -- requests ------------------------------------------------------------------------------------
def hostile_requests(
    collection: str, dim: int, tile_id: int, pool: dict[str, bytes]
) -> st.SearchStrategy[Req]:
    """One hostile request of any family."""
    c = collection
    search = f"/collections/{c}/search"

    @st.composite
    def filter_json(d: Any) -> Req:
        col = d(st.sampled_from(NUMERIC_COLUMNS))
        op = d(st.sampled_from(["gt", "gte", "lt", "lte", "eq", "ne", "in", "nin"]))
        val = d(st.one_of(numbers(), number_texts()))
        cond = {op: [val, d(numbers())] if op in ("in", "nin") else val}
        return Req(
            "POST",
            search,
            {"tile_id": tile_id, "k": 3, "filter": {col: cond}},
            family="filter_json",
        )

    @st.composite
    def filter_expr(d: Any) -> Req:
        col = d(st.sampled_from(NUMERIC_COLUMNS))
        sym = d(st.sampled_from(["=", "!=", ">=", "<=", ">", "<"]))
        expr = f"{col}{sym}{d(number_texts())}"
        if d(st.booleans()):
            return Req("POST", search, {"tile_id": tile_id, "filters": [expr]}, family="expr")
        return Req(
            "POST", search, form={"tile_id": str(tile_id), "filters": expr}, family="expr_form"
        )

    @st.composite
    def vector(d: Any) -> Req:
        n = d(st.sampled_from([dim, dim, dim, 0, 1, dim - 1, dim + 1]))
        base = [0.01] * n
        if n:
            base[d(st.integers(0, n - 1))] = d(numbers())
        if d(st.booleans()) and n:
            base = [d(numbers())] * n
        if d(st.booleans()):
            return Req("POST", search, {"vector": base, "k": 2}, family="vector")
        return Req("POST", f"{search}/batch", {"vectors": [base], "k": 2}, family="vector_batch")

    @st.composite
    def scalar_slot(d: Any) -> Req:
        v = d(st.one_of(numbers(), number_texts()))
        slot = d(st.integers(0, 15))
        if slot == 0:
            return Req("POST", search, {"tile_id": tile_id, "k": v}, family="k")
        if slot == 1:
            return Req("POST", search, {"tile_id": v, "k": 3}, family="tile_id")
        if slot == 2:
            return Req("POST", f"{search}/batch", {"tile_ids": [tile_id, v]}, family="tile_ids")
        if slot == 3:
            return Req(
                "POST", search, {"tile_id": tile_id, "level": "slide", "top_m": v}, family="top_m"
            )
        if slot == 4:
            return Req(
                "POST", search, {"tile_id": tile_id, "params": {"nprobe": v}}, family="params"
            )
        if slot == 5:
            box = {"slide": "x", "x": v, "y": 0, "w": v, "h": 10}
            return Req("POST", search, {"region": box}, family="region")
        if slot == 6:
            return Req(
                "POST",
                "/cohorts",
                {"name": "fz", "collection": c, "near_tile_ids": [v], "k": 5},
                family="near_tile_ids",
            )
        if slot == 7:
            return Req(
                "POST",
                "/cohorts",
                {"name": "fz", "collection": c, "k": v, "near_tile_ids": [tile_id]},
                family="cohort_k",
            )
        if slot == 8:
            return Req(
                "POST",
                "/cohorts",
                {"name": "fz", "collection": c, "min_score": v, "near_tile_ids": [tile_id]},
                family="min_score",
            )
        if slot == 9:
            body = {"collection": c, "label_column": "diagnostic", "seed": v}
            return Req("POST", d(st.sampled_from(["/exports", "/probes"])), body, family="seed")
        if slot == 10:
            body = {"collection": c, "label_column": "diagnostic", "test_fraction": v}
            return Req(
                "POST", d(st.sampled_from(["/exports", "/probes"])), body, family="test_fraction"
            )
        if slot == 11:
            body = {"collection": c, "label_column": "diagnostic", "fractions": [v]}
            return Req("POST", "/probes", body, family="fractions")
        if slot == 12:
            body = {"collection": c, "label_column": "diagnostic", "neighbors": v}
            return Req("POST", "/exports", body, family="neighbors")
        if slot == 13:
            return Req("GET", f"/cohorts/fz?version={v}", family="version")
        if slot == 14:
            return Req("GET", f"/tiles/{v}?collection={c}", family="tile_path")
        return Req("GET", f"/jobs/{v}", family="job_id")

    @st.composite
    def deep(d: Any) -> Req:
        depth = d(st.sampled_from([1, 31, 32, 33, 64, 1000, 5000]))
        where = d(st.integers(0, 3))
        if where == 0:
            raw = (
                f'{{"tile_id": {tile_id}, "filter": {{"age": {{"in": {nested(depth)}}}}}}}'.encode()
            )
            return Req("POST", search, raw=raw, family="deep_body")
        if where == 1:
            return Req(
                "POST",
                search,
                form={"tile_id": str(tile_id), "filter": f'{{"age": {nested(depth)}}}'},
                family="deep_filter_field",
            )
        if where == 2:
            return Req(
                "POST",
                search,
                form={"tile_id": str(tile_id), "params": nested(depth)},
                family="deep_params_field",
            )
        raw = f'{{"name": "fz", "collection": "{c}", "filter": {nested(depth)}}}'.encode()
        return Req("POST", "/cohorts", raw=raw, family="deep_cohort")

    @st.composite
    def image(d: Any) -> Req:
        name, data = d(image_mutations(pool))
        fname = d(st.sampled_from(["q.jpg", "q.png", "q", "../../etc/passwd", "q.tif"]))
        if d(st.integers(0, 3)) == 0:
            return Req(
                "POST",
                "/cohorts",
                form={"name": "fz", "collection": c, "k": "5"},
                files=[("near", fname, data)],
                family=f"image_cohort:{name}",
            )
        return Req(
            "POST", search, form={"k": "3"}, files=[("image", fname, data)], family=f"image:{name}"
        )

    return st.one_of(filter_json(), filter_expr(), vector(), scalar_slot(), deep(), image())


def to_flask(client: Any, req: Req, prefix: str = "/api/v1") -> tuple[int, dict[str, str], bytes]:
    """Send through a Flask test client."""
    path = prefix + req.path
    if req.files:
        data: dict[str, Any] = dict(req.form or {})
        for name, fname, blob in req.files:
            data[name] = (io.BytesIO(blob), fname)
        r = client.open(path, method=req.method, data=data, content_type="multipart/form-data")
    elif req.form is not None:
        r = client.open(path, method=req.method, data=req.form, content_type="multipart/form-data")
    elif req.raw is not None:
        r = client.open(path, method=req.method, data=req.raw, content_type="application/json")
    elif req.json_body is not None:
        r = client.open(
            path, method=req.method, data=_dumps(req.json_body), content_type="application/json"
        )
    else:
        r = client.open(path, method=req.method)
    return r.status_code, dict(r.headers.items()), r.get_data()


def to_requests(
    session: Any, base: str, req: Req, timeout: float = 60.0
) -> tuple[int, dict[str, str], bytes]:
    """Send over HTTP with a ``requests`` session (``base`` is http://host:port)."""
    url = base + "/api/v1" + req.path
    kw: dict[str, Any] = {"timeout": timeout}
    if req.files:
        kw["data"] = req.form or {}
        kw["files"] = [(n, (f, b)) for n, f, b in req.files]
    elif req.form is not None:
        kw["files"] = [(k, (None, v)) for k, v in req.form.items()]
    elif req.raw is not None:
        kw["data"], kw["headers"] = req.raw, {"Content-Type": "application/json"}
    elif req.json_body is not None:
        kw["data"] = _dumps(req.json_body).encode()
        kw["headers"] = {"Content-Type": "application/json"}
    r = session.request(req.method, url, **kw)
    return r.status_code, dict(r.headers), r.content


def _dumps(obj: Any) -> str:
    """JSON text as a hostile client would send it: NaN/Infinity literals and huge integers
    included (Python's encoder writes them; a strict server must refuse them)."""
    import sys

    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(obj)
    finally:
        sys.set_int_max_str_digits(old)
