"""Path / Derm Foundation as published: tiny SavedModels with the exact signatures, run on real
TensorFlow, against the model cards' own calling code."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lamina.encoders.foundation import import_tensorflow  # noqa: E402

# through Lamina's import: it loads triton first (the other order segfaults); a test dependency,
# so a missing TensorFlow fails here instead of skipping
tf = import_tensorflow("tests")

from lamina.encoders import WeightsMismatchError, WeightsNotFoundError, create_encoder  # noqa: E402
from lamina.encoders.base import resize_rgb  # noqa: E402
from lamina.encoders.tf_testing import build_derm_savedmodel, build_path_savedmodel  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def path_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_path_savedmodel(tmp_path_factory.mktemp("pf") / "path-foundation")


@pytest.fixture(scope="session")
def derm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_derm_savedmodel(tmp_path_factory.mktemp("df") / "derm-foundation")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _tiles(shared_data: Path, n: int = 6) -> list[np.ndarray]:
    files = sorted((shared_data / "path_tiles" / "crc_he_224" / "images").glob("*.png"))[:n]
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def _card_path(model: Path, tiles: np.ndarray) -> np.ndarray:
    """The Path Foundation model card's recipe: [0, 1] floats into serving_default, output_0."""
    infer = tf.saved_model.load(str(model)).signatures["serving_default"]
    return infer(tf.constant(tiles.astype("float32") / 255.0))["output_0"].numpy()


def _card_derm(model: Path, images: list[np.ndarray]) -> np.ndarray:
    """The Derm Foundation model card's recipe: PNG bytes in a tf.train.Example, ``inputs``."""
    infer = tf.saved_model.load(str(model)).signatures["serving_default"]
    examples = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "PNG")
        feat = tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()]))
        ex = tf.train.Example(features=tf.train.Features(feature={"image/encoded": feat}))
        examples.append(ex.SerializeToString())
    return infer(inputs=tf.constant(examples))["embedding"].numpy()


def test_path_foundation_matches_the_model_card(path_model: Path, shared_data: Path) -> None:
    tiles = _tiles(shared_data)
    enc = create_encoder("path/foundation", weights=path_model, device="cpu")
    assert (enc.embed_dim, enc.input_px, enc.config.mpp) == (384, 224, 0.5)
    ours = enc.embed(tiles)
    theirs = _card_path(path_model, np.stack(tiles))
    assert ours.shape == (len(tiles), 384)
    assert _cosine(ours, theirs).min() >= 0.9999
    # the tiles differ, so must their vectors
    assert float(np.max(np.abs(ours[0] - ours[1]))) > 1e-3


def test_derm_foundation_matches_the_model_card(derm_model: Path, derm_dir: Path) -> None:
    photos = sorted((derm_dir / "images").iterdir())[:4]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    enc = create_encoder("derm/foundation", weights=derm_model, device="cpu")
    assert (enc.embed_dim, enc.input_px) == (6144, 448)
    ours = enc.embed(images)
    theirs = _card_derm(derm_model, [resize_rgb(im, 448) for im in images])
    assert ours.shape == (4, 6144)
    assert _cosine(ours, theirs).min() >= 0.9999


def test_fingerprint_binds_to_the_model_files(path_model: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(path_model, tmp_path / "copy")
    (copy / "README.md").write_text("not a model file")
    other = build_path_savedmodel(tmp_path / "other", seed=1)
    fp = create_encoder("path/foundation", weights=path_model).fingerprint
    assert create_encoder("path/foundation", weights=copy).fingerprint == fp
    assert create_encoder("path/foundation", weights=other).fingerprint != fp
    # the other model's weights put into the first folder: the fingerprint follows the files
    shutil.rmtree(copy / "variables")
    shutil.copytree(other / "variables", copy / "variables")
    shutil.copy(other / "saved_model.pb", copy / "saved_model.pb")
    assert (
        create_encoder("path/foundation", weights=copy).fingerprint
        == create_encoder("path/foundation", weights=other).fingerprint
    )


def test_found_in_weights_dir_and_hf_cache(
    path_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hf_constants

    from lamina.encoders import encoder_table

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(empty))
    monkeypatch.setenv("LAMINA_WEIGHTS_DIR", str(empty))
    row = {r["key"]: r for r in encoder_table()}["path/foundation"]
    assert row["weights_available"] is False

    wdir = tmp_path / "weights"
    shutil.copytree(path_model, wdir / "path-foundation")
    monkeypatch.setenv("LAMINA_WEIGHTS_DIR", str(wdir))
    enc = create_encoder("path/foundation")
    assert enc.weights_path == str(wdir / "path-foundation")

    # Hugging Face cache, snapshot layout: models--<org>--<name>/snapshots/<rev>/ + refs/main
    monkeypatch.setenv("LAMINA_WEIGHTS_DIR", str(empty))
    repo = tmp_path / "hub" / "models--google--path-foundation"
    rev = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(path_model, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    enc2 = create_encoder("path/foundation")
    assert enc2.weights_path == str(repo / "snapshots" / rev)
    assert enc2.fingerprint == enc.fingerprint
    row = {r["key"]: r for r in encoder_table()}["path/foundation"]
    assert row["weights_available"] is True


def test_missing_model_says_what_where_and_terms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("LAMINA_WEIGHTS_DIR", str(tmp_path))
    for key, repo, folder in (
        ("path/foundation", "google/path-foundation", "path-foundation"),
        ("derm/foundation", "google/derm-foundation", "derm-foundation"),
    ):
        with pytest.raises(WeightsNotFoundError) as err:
            create_encoder(key)
        msg = str(err.value)
        assert key in msg
        assert "Health AI Developer Foundations terms" in msg
        assert f"https://huggingface.co/{repo}" in msg
        assert f"$LAMINA_WEIGHTS_DIR/{folder}/" in msg


def test_a_model_with_other_signatures_is_refused(tmp_path: Path, path_model: Path) -> None:
    with pytest.raises(WeightsMismatchError, match="is float32, expected string"):
        create_encoder("derm/foundation", weights=path_model)
    with pytest.raises(WeightsNotFoundError, match="no saved_model.pb"):
        create_encoder("path/foundation", weights=tmp_path)


def _lamina(home: Path, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "lamina.api", "--home", str(home), *args, "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _stored(home: Path, collection: str) -> tuple[list[dict], np.ndarray]:
    import pyarrow.parquet as pq

    from lamina.search import Store

    rows: list[dict] = []
    vecs = []
    for seg in Store(home).collection(collection).segments():
        rows.extend(pq.read_table(seg.tiles_path).to_pylist())
        vecs.append(np.asarray(seg.vectors()))
    return rows, np.concatenate(vecs)


@pytest.mark.slow
def test_index_photos_and_slide_through_the_cli(
    tmp_path: Path, path_model: Path, derm_model: Path, derm_dir: Path, slides_dir: Path
) -> None:
    from lamina.indexer.tile_images import tile_image

    home = tmp_path / "home"
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((derm_dir / "images").iterdir())[:8]:
        shutil.copy(p, photos / p.name)
    report = _lamina(
        home, "index", str(photos), "--collection", "derm", "--encoder", "derm/foundation",
        "--weights", str(derm_model), "--no-progress",
    )  # fmt: skip
    assert report["indexed"] == 8 and report["ok"]
    rows, vectors = _stored(home, "derm")
    images = [resize_rgb(tile_image(r), 448) for r in rows]
    assert _cosine(vectors, _card_derm(derm_model, images)).min() >= 0.9999

    slide = slides_dir / "CMU-1-Small-Region.svs"
    report = _lamina(
        home, "index", str(slide), "--collection", "wsi", "--encoder", "path/foundation",
        "--weights", str(path_model), "--no-progress",
    )  # fmt: skip
    assert report["indexed"] == 1 and report["tiles"] > 20
    rows, vectors = _stored(home, "wsi")
    tiles = np.stack([resize_rgb(tile_image(r), 224) for r in rows])
    assert _cosine(vectors, _card_path(path_model, tiles)).min() >= 0.9999

    # a query by image runs the same model (weights recorded in the collection)
    query = sorted(photos.iterdir())[3]
    hit = _lamina(home, "search", "--collection", "derm", "--image", str(query), "-k", "1")
    assert Path(hit["hits"][0]["source"]).name == query.name
