"""``vistream bench console``: the web console's two speed targets, on loopback.

* A search answer with thumbnails at ``frames`` indexed frames (100k by default): the time from
  sending ``GET /search/frame`` (or ``POST /search/image`` with a backbone) to holding the
  answer and every hit's thumbnail, fetched over 6 connections as a browser does. Baseline in
  the same run: the bare ``LiveIndex.search_frame`` call, no HTTP, no thumbnails.
* The streams panel's refresh (``GET /console/api/streams``, once a second in the page) over
  the same store: 4 streams, no tracks (the store's worst case).
* First paint of ``/console`` in headless Chromium (when ``chromium`` and ``chromedriver`` are
  installed): first-contentful-paint of the first load and the median of the next ones.

The index holds random unit vectors (the answer's cost does not depend on what they are), the
thumbnail store one small real JPEG per frame.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from vistream.models.hashing.live import LiveIndex
from vistream.pipeline.console import attach_console, thumb_url
from vistream.pipeline.serve import background_server
from vistream.pipeline.service import ServiceLimits, create_app
from vistream.stages.records import PNG, encode_image
from vistream.stages.thumbstore import ThumbnailStore


def _fill(frames: int, dim: int, n_bits: int, root: Path, progress: bool, model_id: str):
    rng = np.random.default_rng(0)
    index = LiveIndex("lsh", n_bits=n_bits, seed=0)
    index.search_threads = 1  # as `vistream serve` (--threads 1): requests run in parallel
    store = ThumbnailStore(root, max_frames=frames, max_bytes=1 << 40)
    yy, xx = np.mgrid[0:120, 0:160]
    thumb = encode_image(np.dstack([xx, yy, (xx + yy) // 2]).astype(np.uint8), quality=80)
    chunk = 10_000
    bar = tqdm(total=frames, desc="index + thumbnails", unit="frame", disable=not progress)
    for start in range(0, frames, chunk):
        ids = [f"cam{i % 4}:{i:08d}" for i in range(start, min(start + chunk, frames))]
        X = rng.standard_normal((len(ids), dim)).astype(np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        index.add(ids, X, stream_ids=[i.split(":")[0] for i in ids],
                  timestamps=[1_767_000_000_000 + 40 * int(i[5:]) for i in ids], model_id=model_id)
        store.put_many([{"frame_id": i, "stream_id": i.split(":")[0], "jpeg": thumb,
                         "width": 640, "height": 480, "thumb_width": 160, "thumb_height": 120}
                        for i in ids])
        bar.update(len(ids))
    bar.close()
    return index, store, len(thumb)


def _stats(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 2),
            "max_ms": round(ms[-1], 2)}


def _answer_with_thumbs(client: httpx.Client, pool: ThreadPoolExecutor, send) -> float:
    t0 = time.perf_counter()
    r = send()
    r.raise_for_status()
    thumbs = list(pool.map(lambda h: client.get(thumb_url(h["frame_id"])), r.json()["hits"]))
    if not thumbs or any(t.status_code != 200 for t in thumbs):
        raise RuntimeError("a hit without its thumbnail")
    return (time.perf_counter() - t0) * 1000


def first_paint(url: str, loads: int) -> dict[str, Any] | None:
    """First-contentful-paint of ``url`` in headless Chromium (None without one)."""
    driver_path, chromium = shutil.which("chromedriver"), shutil.which("chromium")
    if not (driver_path and chromium):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    fcp = []
    try:
        for _ in range(loads):
            driver.get("about:blank")
            driver.get(url)
            for _ in range(200):
                v = driver.execute_script(
                    "const p = performance.getEntriesByName('first-contentful-paint')[0];"
                    "return p ? p.startTime : null;")
                if v is not None:
                    break
                time.sleep(0.01)
            fcp.append(float(v))
    finally:
        driver.quit()
    return {"first_load_ms": round(fcp[0], 1),
            "median_ms": round(statistics.median(fcp[1:] or fcp), 1), "loads": loads}


def bench_console(frames: int = 100_000, dim: int = 512, n_bits: int = 64, k: int = 12,
                  queries: int = 50, backbone: str | None = None, loads: int = 10,
                  progress: bool = True) -> dict[str, Any]:
    """Search-with-thumbnails latency at ``frames`` indexed frames and the console's first
    paint; see the module's docstring."""
    root = Path(tempfile.mkdtemp(prefix="vistream-bench-console-"))
    try:
        extractor = None
        if backbone:
            # torch: only when image queries are measured
            from vistream.models.backbones.extractor import BackboneExtractor

            extractor = BackboneExtractor(backbone, input_size=224, seed=0)
            dim = extractor.dim
        index, store, thumb_bytes = _fill(frames, dim, n_bits, root / "thumbs", progress,
                                         extractor.model_id if extractor else "bench")
        app = create_app(index, extractor, ServiceLimits())
        attach_console(app, store=store)
        rng = np.random.default_rng(1)
        ids = [f"cam{i % 4}:{i:08d}" for i in rng.integers(0, frames, queries)]
        bare = []
        for fid in ids:
            t0 = time.perf_counter()
            index.search_frame(fid, k)
            bare.append((time.perf_counter() - t0) * 1000)
        out: dict[str, Any] = {"frames": frames, "dim": dim, "n_bits": n_bits, "k": k,
                               "queries": queries, "thumb_bytes": thumb_bytes,
                               "baseline_index_search_frame": _stats(bare)}
        try:
            with background_server(app) as url:
                with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(6) as pool:
                    client.get("/healthz")
                    refresh = []
                    for _ in range(queries):
                        t0 = time.perf_counter()
                        client.get("/console/api/streams").raise_for_status()
                        refresh.append((time.perf_counter() - t0) * 1000)
                    out["streams_refresh"] = _stats(refresh)
                    out["search_frame_with_thumbnails"] = _stats([_answer_with_thumbs(
                        client, pool, lambda f=fid: client.get("/search/frame",
                                                               params={"frame_id": f, "k": k}))
                        for fid in ids])
                    if extractor is not None:
                        img = encode_image(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), PNG)
                        out["search_image_with_thumbnails"] = _stats([_answer_with_thumbs(
                            client, pool, lambda: client.post(
                                "/search/image", params={"k": k},
                                files={"image": ("q.png", img, "image/png")}))
                            for _ in range(max(5, queries // 5))])
                        out["backbone"] = backbone
                out["first_paint"] = first_paint(url + "/console", loads) if loads else None
        finally:
            store.close()
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)
