"""The query API: searches, joined metadata, and 4xx (never 5xx) on bad input."""

from __future__ import annotations

import functools
import json
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from vistream.models.backbones.extractor import BackboneExtractor, FeatureExtractor
from vistream.models.hashing.live import LiveIndex
from vistream.stages.records import encode_image
from vistream.pipeline.serve import background_server
from vistream.pipeline.service import ServiceLimits, create_app
from vistream.stages.records import image_size
from tests.conftest import ColourExtractor, random_image




def block_image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Four flat quadrants of random colours plus mild noise: distinct colour-grid features."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    for y in (0, h // 2):
        for x in (0, w // 2):
            img[y:y + h // 2, x:x + w // 2] = rng.integers(0, 256, 3)
    noise = rng.integers(-4, 5, img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG signature + IHDR claiming w x h pixels, without pixel data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


@pytest.fixture(scope="module")
def setup():
    ext = ColourExtractor()
    images = [block_image(i) for i in range(40)]
    X = ext.extract(images)
    index = LiveIndex("lsh", n_bits=32, seed=0)
    fids = [f"cam{i % 2}:{i:08d}" for i in range(40)]
    index.add(fids, X, labels=[i % 4 for i in range(40)], stream_ids=[f"cam{i % 2}" for i in range(40)],
              timestamps=[1000 + i for i in range(40)], model_id=ext.model_id)
    index.set_meta(fids[3], caption="a person crossing",
                   tracks=[{"track_id": 5, "box": [1.0, 2.0, 3.0, 4.0], "score": 0.75}])
    limits = ServiceLimits(max_upload_bytes=200_000, max_pixels=1_000_000, max_k=50)
    client = TestClient(create_app(index, ext, limits))
    return index, client, images, fids, X


def test_openapi_and_health(setup):
    index, client, *_ = setup
    spec = client.get("/openapi.json").json()
    assert {"/search/image", "/search/frame", "/search/vector", "/healthz"} <= set(spec["paths"])
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["frames"] == 40 and h["model"] == "lsh"
    assert h["extractor"] == "colour-grid" and h["feature_model_id"] == "colour-grid"


def test_search_by_frame_joins_metadata(setup):
    index, client, _, fids, _ = setup
    r = client.get("/search/frame", params={"frame_id": fids[3], "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == "frame" and body["k"] == 5 and len(body["hits"]) == 5
    assert (body["model"], body["model_version"], body["warm_start"]) == ("lsh", 1, False)
    top = body["hits"][0]
    assert top["frame_id"] == fids[3] and top["distance"] == 0
    assert (top["stream_id"], top["timestamp_ms"], top["label"]) == ("cam1", 1003, 3)
    assert top["caption"] == "a person crossing"
    assert top["tracks"] == [{"track_id": 5, "box": [1.0, 2.0, 3.0, 4.0], "score": 0.75}]
    dists = [h["distance"] for h in body["hits"]]
    assert dists == sorted(dists)
    want = index.search_frame(fids[3], 5)
    assert [h["frame_id"] for h in body["hits"]] == [h.frame_id for h in want.hits]


def test_search_by_image_finds_the_same_image(setup):
    _, client, images, fids, _ = setup
    for i in (0, 17):
        for ctype, ext in (("image/jpeg", "jpg"), ("image/png", "png")):
            data = encode_image(images[i], ctype, quality=95)
            r = client.post("/search/image", params={"k": 3},
                            files={"image": (f"q.{ext}", data, ctype)})
            assert r.status_code == 200, r.text
            hits = r.json()["hits"]
            if ctype == "image/png":  # lossless: the very same features, the very same code
                assert hits[0]["frame_id"] == fids[i] and hits[0]["distance"] == 0
            else:
                assert fids[i] in [h["frame_id"] for h in hits]


def test_search_by_vector(setup):
    index, client, _, fids, X = setup
    r = client.post("/search/vector", json={"vector": X[7].tolist(), "k": 4})
    assert r.status_code == 200
    assert r.json()["hits"][0]["frame_id"] == fids[7]
    assert r.json()["hits"][0]["distance"] == 0


def test_metrics(setup):
    _, client, *_ = setup
    client.get("/search/frame", params={"frame_id": "nope"})
    text = client.get("/metrics").text
    assert "vistream_index_frames 40.0" in text
    assert 'vistream_api_requests_total{endpoint="/search/frame",status="404"}' in text


@functools.cache
def bad_requests(fids: tuple[str, ...]):
    ok_png = encode_image(random_image(20, 20), "image/png")
    big_image = encode_image(random_image(1100, 1000, seed=3), "image/png")  # 1.1 Mpx > 1 Mpx
    return {
        "empty upload": ("post", "/search/image", {"files": {"image": ("e.jpg", b"", "image/jpeg")}}, 400),
        "not an image": ("post", "/search/image",
                         {"files": {"image": ("x.txt", b"hello, world" * 10, "text/plain")}}, 415),
        "a GIF": ("post", "/search/image", {"files": {"image": ("x.gif", b"GIF89a" + bytes(50),
                                                                 "image/gif")}}, 415),
        "truncated png": ("post", "/search/image",
                          {"files": {"image": ("t.png", ok_png[: len(ok_png) // 2], "image/png")}}, 400),
        "corrupt jpeg": ("post", "/search/image",
                         {"files": {"image": ("c.jpg", b"\xff\xd8\xff\xe0" + bytes(300) + b"\xff\xd9",
                                              "image/jpeg")}}, 415),
        "too many pixels": ("post", "/search/image",
                            {"files": {"image": ("b.png", png_header_only(100_000, 100_000),
                                                 "image/png")}}, 413),
        "image over the pixel cap": ("post", "/search/image",
                                     {"files": {"image": ("b.png", big_image, "image/png")}}, 413),
        "upload too large": ("post", "/search/image",
                             {"files": {"image": ("b.jpg", b"\xff\xd8\xff" + bytes(300_000),
                                                  "image/jpeg")}}, 413),
        "upload over the cap, within the framing allowance": (
            "post", "/search/image",
            {"files": {"image": ("b.jpg", b"\xff\xd8\xff" + bytes(230_000), "image/jpeg")}}, 413),
        "no file field": ("post", "/search/image", {"data": {"x": "1"}}, 422),
        "k zero": ("get", "/search/frame", {"params": {"frame_id": fids[0], "k": 0}}, 422),
        "k too large": ("get", "/search/frame", {"params": {"frame_id": fids[0], "k": 51}}, 422),
        "k not a number": ("get", "/search/frame", {"params": {"frame_id": fids[0], "k": "ten"}}, 422),
        "k too large (image)": ("post", "/search/image",
                                {"params": {"k": 10_000},
                                 "files": {"image": ("a.png", ok_png, "image/png")}}, 422),
        "unknown frame id": ("get", "/search/frame", {"params": {"frame_id": "cam9:00000001"}}, 404),
        "missing frame id": ("get", "/search/frame", {}, 422),
        "vector wrong length": ("post", "/search/vector", {"json": {"vector": [0.1] * 5}}, 422),
        "vector empty": ("post", "/search/vector", {"json": {"vector": []}}, 422),
        "vector NaN": ("post", "/search/vector",
                       {"content": b'{"vector": [NaN' + b", 1" * 47 + b"]}",
                        "headers": {"content-type": "application/json"}}, 422),
        "vector strings": ("post", "/search/vector", {"json": {"vector": ["a"] * 48}}, 422),
        "vector k": ("post", "/search/vector", {"json": {"vector": [0.1] * 48, "k": -1}}, 422),
        "malformed json": ("post", "/search/vector",
                           {"content": b"{nope", "headers": {"content-type": "application/json"}},
                           422),
    }


@pytest.mark.parametrize("case", list(bad_requests(("f",))))
def test_bad_input_is_4xx_never_5xx(setup, case):
    _, client, _, fids, _ = setup
    method, path, kwargs, status = bad_requests(tuple(fids))[case]
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, (case, r.status_code, r.text)
    assert "detail" in r.json()


def test_upload_without_content_length_is_411(setup):
    _, client, *_ = setup

    def body():
        yield b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n"
        yield b"\xff\xd8\xff" + bytes(10) + b"\r\n--x--\r\n"

    r = client.post("/search/image", content=body(),
                    headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 411


def test_image_search_needs_a_matching_extractor(setup):
    index, *_ = setup
    png = encode_image(random_image(20, 20), "image/png")
    files = {"image": ("a.png", png, "image/png")}
    assert TestClient(create_app(index)).post("/search/image", files=files).status_code == 409

    class Wrong(ColourExtractor):
        dim = 7

    assert TestClient(create_app(index, Wrong())).post("/search/image", files=files).status_code == 409


def test_empty_index_answers_empty_results():
    client = TestClient(create_app(LiveIndex("sdoh", n_bits=16), ColourExtractor()))
    r = client.post("/search/vector", json={"vector": [0.5] * 48, "k": 3})
    assert r.status_code == 200 and r.json()["hits"] == [] and r.json()["model"] is None
    png = encode_image(random_image(20, 20), "image/png")
    r = client.post("/search/image", files={"image": ("a.png", png, "image/png")})
    assert r.status_code == 200 and r.json()["hits"] == []
    assert client.get("/search/frame", params={"frame_id": "x"}).status_code == 404


def test_image_size_reads_headers():
    assert image_size(png_header_only(640, 480)) == (640, 480)
    jpg = encode_image(random_image(37, 53), "image/jpeg")
    assert image_size(jpg) == (53, 37)
    assert image_size(b"\xff\xd8\xff\xe0\x00") is None
    assert image_size(b"GIF89a") is None


def test_backbone_extractor():
    ext = BackboneExtractor("resnet20", input_size=32, seed=0)
    assert isinstance(ext, FeatureExtractor)
    imgs = [random_image(40, 60, seed=i) for i in range(3)] + [random_image(10, 10)[:, :, 0]]
    F = ext.extract(imgs)
    assert F.shape == (4, ext.dim) and F.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(F, axis=1), 1.0, rtol=1e-5)
    again = BackboneExtractor("resnet20", input_size=32, seed=0).extract(imgs[:1])
    np.testing.assert_allclose(again, F[:1], rtol=1e-5, atol=1e-6)  # fixed seed, same weights
    assert "random-init" in ext.model_id
    assert ext.extract([]).shape == (0, ext.dim)


def test_query_cli_against_a_running_server(setup, tmp_path):
    from typer.testing import CliRunner

    from vistream.cli.main import app

    index, _, images, fids, _ = setup
    with background_server(create_app(index, ColourExtractor()), log_level="error") as url:
        runner = CliRunner()
        r = runner.invoke(app, ["query", "--frame", fids[2], "--k", "3", "--url", url])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["hits"][0]["frame_id"] == fids[2]
        img = tmp_path / "q.png"
        img.write_bytes(encode_image(images[5], "image/png"))
        r = runner.invoke(app, ["query", str(img), "--url", url])
        assert r.exit_code == 0 and json.loads(r.stdout)["hits"][0]["frame_id"] == fids[5]
        r = runner.invoke(app, ["query", "--frame", "nope", "--url", url])
        assert r.exit_code == 1 and "404" in r.output


def test_live_pipeline_on_the_memory_bus_serves_its_own_frames(tmp_path):
    """Source -> features stage -> index stage on the embedded bus, with the API sharing the live
    index; an image query is embedded by the pipeline's own features stage."""
    pytest.importorskip("vistream.stages.features")
    import vistream.stages.features  # noqa: F401  (registers the stage type)
    import vistream.stages.hashing  # noqa: F401
    from vistream.pipeline.config import parse_config
    from vistream.pipeline.app import InProcessPipeline
    from vistream.pipeline.serve import StageExtractor

    folder = tmp_path / "images"
    folder.mkdir()
    imgs = [block_image(i, 48, 64) for i in range(12)]
    for i, im in enumerate(imgs):
        cv2.imwrite(str(folder / f"{i:03d}.png"), im)
    cfg = parse_config({
        "name": "t", "bus": {"backend": "memory", "partitions": 1},
        "sources": [{"source": str(folder), "topic": "frames", "stream_id": "cam"}],
        "stages": [
            {"name": "feats", "type": "features", "inputs": ["frames"],
             "outputs": {"features": "features"}, "batch_size": 8,
             "params": {"random_init": True, "arch": "resnet20", "seed": 0}},
            {"name": "index", "type": "hashing", "inputs": ["features"],
             "params": {"model": "sdoh", "n_bits": 32, "background": False}},
        ]})
    live = InProcessPipeline.serving(cfg, "index").start()
    try:
        deadline = time.monotonic() + 60
        while len(live.index) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(live.index) == 12
        extractor = StageExtractor.from_config(cfg, "index")
        assert extractor.model_id == live.index.feature_model_id
        client = TestClient(create_app(live.index, extractor))
        assert client.get("/healthz").json()["frames"] == 12
        # The source frames were JPEG-encoded at quality 90 by ingest: the same bytes decode to
        # the same pixels, hence the same features and code.
        query = encode_image(imgs[5], "image/jpeg", quality=90)
        r = client.post("/search/image", params={"k": 3},
                        files={"image": ("q.jpg", query, "image/jpeg")})
        assert r.status_code == 200, r.text
        top = r.json()["hits"][0]
        assert top["distance"] == 0 and top["stream_id"] == "cam"
        assert top["frame_id"] == live.index.frame_ids()[5]
    finally:
        live.close()
    assert not live.errors
