"""The write token of the query API, the refusal to listen beyond loopback without one, body
limits, and a schema that says what the server checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from vistream.models.hashing.live import LiveIndex
from vistream.pipeline.api_common import (
    TOKEN_ENV,
    check_listen,
    check_token,
    is_loopback,
    require_token,
)
from vistream.pipeline.api_tracks import attach_producer
from vistream.pipeline.bus import TopicSpec
from vistream.pipeline.bus.memory import MemoryBus
from vistream.pipeline.serve import write_token
from vistream.pipeline.serve import background_server
from vistream.pipeline.service import ServiceLimits, create_app

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-for-tests"
WRITES = [("post", "/labels", {"json": {"frame_id": "cam0:00000001", "class_name": "car"}}),
          ("post", "/tracks", {"json": {"stream_id": "cam0", "box": [1, 2, 8, 8]}}),
          ("delete", "/tracks/3", {"params": {"stream_id": "cam0"}})]


def make_app(token: str | None = TOKEN, limits: ServiceLimits | None = None, dim: int = 8):
    index = LiveIndex("lsh", n_bits=16, seed=0)
    if dim:
        rng = np.random.default_rng(0)
        index.add([f"cam0:{i:08d}" for i in range(10)], rng.normal(size=(10, dim)),
                  stream_ids=["cam0"] * 10)
    app = create_app(index, limits=limits, api_token=token)
    bus = MemoryBus()
    bus.create_topics([TopicSpec("track-inits", 1)])
    attach_producer(app, bus.producer(), "track-inits")
    return app


@pytest.fixture(scope="module")
def client():
    return TestClient(make_app())


@pytest.mark.parametrize(("method", "path", "kw"), WRITES)
def test_writes_need_the_token(client, method, path, kw):
    r = getattr(client, method)(path, **kw)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert TOKEN_ENV in r.json()["detail"]
    r = getattr(client, method)(path, headers={"Authorization": "Bearer wrong-token"}, **kw)
    assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]
    r = getattr(client, method)(path, headers={"Authorization": f"Basic {TOKEN}"}, **kw)
    assert r.status_code == 401
    r = getattr(client, method)(path, headers={"Authorization": f"Bearer {TOKEN}"}, **kw)
    assert r.status_code in (200, 202), r.text


def test_reads_need_no_token(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/stats").status_code == 200
    assert client.post("/search/vector", json={"vector": [0.5] * 8}).status_code == 200
    assert client.get("/search/frame", params={"frame_id": "cam0:00000001"}).status_code == 200


def test_without_a_token_writes_are_open():
    c = TestClient(make_app(token=None))
    for method, path, kw in WRITES:
        assert getattr(c, method)(path, **kw).status_code in (200, 202)
    assert "securitySchemes" not in c.get("/openapi.json").json()["components"]


def test_schema_declares_the_bearer_scheme_on_writes_only(client):
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"][
            "securitySchemes"]["bearerAuth"]["description"]}
    secured = {(m, p) for p, ops in spec["paths"].items() for m, op in ops.items()
               if op.get("security")}
    assert secured == {("post", "/labels"), ("post", "/tracks"), ("delete", "/tracks/{track_id}")}
    r401 = spec["paths"]["/labels"]["post"]["responses"]["401"]
    assert "WWW-Authenticate" in r401["headers"]


def test_tokens_and_addresses():
    assert check_token(None) is None and check_token("  ") is None
    assert check_token(f" {TOKEN} ") == TOKEN
    with pytest.raises(ValueError, match="at least 16"):
        check_token("short")
    with pytest.raises(ValueError):
        create_app(LiveIndex("lsh", n_bits=16), api_token="short")
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
        check_listen(host, None)
    for host in ("0.0.0.0", "::", "10.0.0.5", "example.org"):
        assert not is_loopback(host), host
        with pytest.raises(ValueError, match=TOKEN_ENV):
            check_listen(host, None)
        check_listen(host, TOKEN)
    assert require_token.__doc__


def test_write_token_reads_the_environment(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert write_token("127.0.0.1") is None
    with pytest.raises(ValueError, match="refusing to listen on 0.0.0.0"):
        write_token("0.0.0.0")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert write_token("0.0.0.0") == TOKEN
    assert write_token("0.0.0.0", "another-long-token-1") == "another-long-token-1"


def test_serve_refuses_a_public_address_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    r = subprocess.run([sys.executable, "-m", "vistream", "serve", "--snapshot", str(tmp_path),
                        "--host", "0.0.0.0", "--backbone", "none"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "refusing to listen on 0.0.0.0" in r.stderr and TOKEN_ENV in r.stderr
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------- body limits


def test_json_bodies_over_the_limit_are_413_before_they_are_read():
    c = TestClient(make_app(limits=ServiceLimits(max_body_bytes=1000)))
    r = c.post("/search/vector", json={"vector": [0.5] * 500})
    assert r.status_code == 413 and "1000 bytes" in r.json()["detail"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = c.post("/labels", headers=auth, json={"frame_id": "x" * 990, "class_name": "car"})
    assert r.status_code == 413
    assert c.post("/search/vector", json={"vector": [0.5] * 8}).status_code == 200


def test_a_chunked_body_without_length_is_411(client):
    def chunks():
        yield b'{"vector": [0.5, 0.5, 0.5, 0.5, '
        yield b'0.5, 0.5, 0.5, 0.5]}'

    r = client.post("/search/vector", content=chunks(),
                    headers={"content-type": "application/json"})
    assert r.status_code == 411
    r = client.post("/search/vector", content=b"{}",
                    headers={"content-type": "application/json", "content-length": "x"})
    assert r.status_code == 400


# --------------------------------------------------------------------------- the schema


def test_schema_states_the_limits_the_server_enforces(client):
    spec = client.get("/openapi.json").json()
    k = {p["name"]: p["schema"] for p in spec["paths"]["/search/frame"]["get"]["parameters"]}["k"]
    assert (k["minimum"], k["maximum"]) == (1, 1000)
    vq = spec["components"]["schemas"]["VectorQuery"]
    assert vq["properties"]["vector"]["minItems"] == vq["properties"]["vector"]["maxItems"] == 8
    assert vq["properties"]["k"]["maximum"] == 1000
    body = spec["paths"]["/search/image"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["encoding"]["image"]["contentType"] == "image/jpeg, image/png"
    image = spec["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[1]]
    assert image["properties"]["image"]["minLength"] == 1
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for code, answer in op["responses"].items():
                if code[0] in "45":
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorOut"), (method, path, code)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_the_vector_length_follows_the_index():
    app = make_app(dim=0)
    c = TestClient(app)
    vector = c.get("/openapi.json").json()["components"]["schemas"]["VectorQuery"][
        "properties"]["vector"]
    assert "minItems" in vector and vector.get("maxItems") == 65536  # dim unknown yet
    app.state.index.add(["a:1"], np.ones((1, 5)), stream_ids=["a"])
    vector = c.get("/openapi.json").json()["components"]["schemas"]["VectorQuery"][
        "properties"]["vector"]
    assert vector["minItems"] == vector["maxItems"] == 5


def test_validation_errors_have_the_declared_shape(client):
    r = client.get("/search/frame", params={"frame_id": "x", "k": 0})
    assert r.status_code == 422
    (item,) = r.json()["detail"]
    assert set(item) == {"loc", "msg", "type"} and item["loc"] == ["query", "k"]
    r = client.post("/search/vector", content=b'{"vector": [NaN, 1, 1, 1, 1, 1, 1, 1]}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "NaN" not in r.text
    r = client.post("/search/vector", json={"vector": [True] * 8})
    assert r.status_code == 422


def test_query_cli_prints_validation_errors_as_sentences():
    from typer.testing import CliRunner

    from vistream.cli.main import app

    with background_server(make_app(), log_level="error") as url:
        r = CliRunner().invoke(app, ["query", "--frame", "cam0:00000001", "--k", "0",
                                     "--url", url])
        assert r.exit_code == 1
        assert "error 422: query.k: Input should be greater than or equal to 1" in r.output
