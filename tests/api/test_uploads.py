"""Upload bounds: bad images and oversized bodies are 4xx with a code, never 5xx."""

from __future__ import annotations

import http.client
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

URL = "/api/v1/collections/derm/search"


def png_header_only(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of width x height, all black, streamed (low memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    parts = [comp.compress(row) for _ in range(height)]
    idat = b"".join(parts) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def post_image(client: Any, data: bytes, name: str = "q.jpg") -> Any:
    return client.post(URL, data={"image": (io.BytesIO(data), name), "k": "3"})


def test_truncated_jpeg(client: Any, derm_images: list[Path]) -> None:
    data = derm_images[0].read_bytes()
    r = post_image(client, data[: len(data) // 2])
    assert r.status_code == 422 and r.get_json()["code"] == "UNREADABLE_IMAGE"


def test_text_file(client: Any) -> None:
    r = post_image(client, b"this is not an image\n" * 10, "notes.txt")
    assert r.status_code == 422 and r.get_json()["code"] == "UNREADABLE_IMAGE"
    r = post_image(client, b"", "empty.jpg")
    assert r.status_code == 422 and r.get_json()["code"] == "UNREADABLE_IMAGE"


def test_decompression_bomb_png(client: Any) -> None:
    bomb = png_header_only(30000, 30000)
    assert len(bomb) < 1_000_000
    r = post_image(client, bomb, "bomb.png")
    assert r.status_code == 413 and r.get_json()["code"] == "IMAGE_TOO_LARGE"


def test_over_pixel_limit(client: Any) -> None:
    r = post_image(client, png_header_only(8000, 8000), "big.png")  # 64 Mpx > 50 Mpx
    assert r.status_code == 413 and r.get_json()["code"] == "IMAGE_TOO_LARGE"


def test_body_over_max_content_length(derm_home: Path) -> None:
    from lamina.api.app import create_app

    app = create_app({"HOME": str(derm_home), "MAX_CONTENT_LENGTH": 100_000})
    r = post_image(app.test_client(), b"\xff" * 200_000)
    assert r.status_code == 413 and r.get_json()["code"] == "PAYLOAD_TOO_LARGE"
    r = app.test_client().post(URL, json={"vector": [0.5] * 30_000})
    assert r.status_code == 413 and r.get_json()["code"] == "PAYLOAD_TOO_LARGE"


def test_chunked_body_over_limit_through_waitress(derm_home: Path, live_server: Any) -> None:
    """No Content-Length (chunked): the limit still holds (waitress sets wsgi.input_terminated)."""
    from lamina.api.app import create_app

    app = create_app({"HOME": str(derm_home), "MAX_CONTENT_LENGTH": 100_000})
    with live_server(app, threads=2) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        body = b'{"vector": [' + b"0.5, " * 60_000 + b"0.5]}"
        conn.request(
            "POST",
            URL,
            body=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]),
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        doc = resp.read()
        conn.close()
    assert resp.status == 413, doc
    assert b"PAYLOAD_TOO_LARGE" in doc


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16"])
def test_odd_modes_are_fine(client: Any, mode: str) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (40, 30)).save(buf, "PNG")
    r = post_image(client, buf.getvalue(), "odd.png")
    assert r.status_code == 200, r.get_json()
