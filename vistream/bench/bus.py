"""``vistream bench bus``: frames/s of one hop (produce -> stage -> produce).

Frames are 640x360 JPEGs (quality 90) made from scikit-image's bundled photos, each shifted and
noised so no two are identical; they are encoded before timing, because the hop is what is
measured. One hop is: a producer sends N frame records to ``in``; a relay stage, run by the
real :class:`~pipeline.runner.StageRunner` (decode + validate the envelope, produce, flush,
commit), forwards them to ``out``; a consumer reads ``out``. The figure is N divided by the
time from the first send to the last record read on ``out``. On Kafka the stage runs in its
own process, as a deployed stage does; on the memory bus everything shares one process because
the bus lives there.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skimage_data

from vistream.pipeline import broker
from vistream.pipeline.bus import Bus, TopicSpec, make_bus
from vistream.pipeline.runner import StageRunner
from vistream.pipeline.wire import OutRecord, frame_to_record
from vistream.stages.records import Frame
from vistream.stages.relay import RelayStage

WIDTH, HEIGHT = 640, 360
TARGET_KAFKA_FPS = 400


def sample_frames(n_distinct: int = 64, seed: int = 0) -> list[OutRecord]:
    rng = np.random.default_rng(seed)
    base = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    base = cv2.resize(base, (WIDTH + 64, HEIGHT + 64), interpolation=cv2.INTER_AREA)
    out = []
    for i in range(n_distinct):
        dx, dy = rng.integers(0, 64, 2)
        img = base[dy:dy + HEIGHT, dx:dx + WIDTH].astype(np.int16)
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        out.append(frame_to_record(Frame.from_image(img, "bench", i, timestamp_ms=i)))
    return out


def _records(frames: int) -> list[OutRecord]:
    pool = sample_frames()
    recs = []
    for i in range(frames):
        src = pool[i % len(pool)]
        headers = [(k, v) if k not in ("frame_id", "seq") else
                   (k, (f"bench:{i:08d}" if k == "frame_id" else str(i)).encode())
                   for k, v in src.headers]
        recs.append(OutRecord(src.key, src.value, headers))
    return recs


def _send_all(bus: Bus, topic: str, recs: list[OutRecord]) -> None:
    with bus.producer() as p:
        for k, r in enumerate(recs):
            p.send(topic, r.value, r.key, r.headers)
            if k % 256 == 255:
                p.flush()
        p.flush()


def _hop(bus: Bus, recs: list[OutRecord], start_stage: Callable[[str, str], Callable[[], None]]
         ) -> float:
    tin, tout = f"bench-in-{uuid.uuid4().hex[:8]}", f"bench-out-{uuid.uuid4().hex[:8]}"
    bus.create_topics([TopicSpec(tin, 1), TopicSpec(tout, 1), TopicSpec(tin + ".dlq", 1)])
    reader = bus.consumer([tout], f"bench-reader-{uuid.uuid4().hex[:8]}")
    stop_stage = start_stage(tin, tout)
    try:
        # Warm up: the stage and the reader have joined their groups once a record crosses.
        _send_all(bus, tin, recs[:1])
        _read(reader, 1, 120)
        t0 = time.perf_counter()
        sender = threading.Thread(target=_send_all, args=(bus, tin, recs[1:]))
        sender.start()
        _read(reader, len(recs) - 1, 600)
        elapsed = time.perf_counter() - t0
        sender.join()
    finally:
        stop_stage()
        reader.close()
    return (len(recs) - 1) / elapsed


def _read(consumer, n: int, timeout: float) -> None:
    got = 0
    deadline = time.monotonic() + timeout
    while got < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {got} of {n} records crossed the hop in {timeout:.0f} s")
        got += len(consumer.poll(500, 0.5))


def _memory_stage(bus: Bus) -> Callable[[str, str], Callable[[], None]]:
    def start(tin: str, tout: str) -> Callable[[], None]:
        stop = threading.Event()
        runner = StageRunner(RelayStage(), bus, [tin], {"frame": tout}, batch_size=64,
                             poll_timeout=0.1)
        runner.open()
        t = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        t.start()

        def halt() -> None:
            stop.set()
            t.join(30)
        return halt
    return start


def _kafka_stage(bootstrap: str, workdir: Path) -> Callable[[str, str], Callable[[], None]]:
    def start(tin: str, tout: str) -> Callable[[], None]:
        cfg = workdir / f"{tin}.yaml"
        cfg.write_text(
            f"name: bench\nbus: {{backend: kafka, bootstrap: '{bootstrap}', partitions: 1}}\n"
            f"stages:\n  - {{name: relay, type: relay, inputs: [{tin}], "
            f"outputs: {{frame: {tout}}}, batch_size: 64, poll_timeout: 0.1, "
            f"group: bench-{tin}}}\n")
        proc = subprocess.Popen([sys.executable, "-m", "vistream", "stage", "relay",
                                 "--config", str(cfg), "--log-format", "json"],
                                stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

        def halt() -> None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        return halt
    return start


def bench_bus(frames: int = 2000, bootstrap: str | None = None, port: int = 9092,
              kafka: bool = True, echo: Callable[[str], None] = print) -> dict:
    recs = _records(frames + 1)
    mean_bytes = float(np.mean([len(r.value) for r in recs]))
    echo(f"{frames} frames of {WIDTH}x{HEIGHT} JPEG, mean {mean_bytes / 1024:.1f} KiB")
    result: dict = {"bench": "bus", "frames": frames, "frame_size": f"{WIDTH}x{HEIGHT}",
                    "mean_frame_bytes": round(mean_bytes)}
    mem = make_bus("memory")
    result["memory_fps"] = round(_hop(mem, recs, _memory_stage(mem)), 1)
    echo(f"memory bus: {result['memory_fps']} frames/s")
    if kafka:
        with ExitStack() as own:
            if bootstrap is None:  # a broker of our own, stopped when done unless one was up
                bootstrap = own.enter_context(broker.running(port=port)).bootstrap
            with make_bus("kafka", bootstrap) as kbus, tempfile.TemporaryDirectory() as tmp:
                result["kafka_fps"] = round(_hop(kbus, recs, _kafka_stage(bootstrap, Path(tmp))), 1)
        echo(f"kafka ({bootstrap}): {result['kafka_fps']} frames/s")
        result["kafka_over_memory"] = round(result["kafka_fps"] / result["memory_fps"], 4)
        result["kafka_target_fps"] = TARGET_KAFKA_FPS
        result["kafka_meets_target"] = result["kafka_fps"] >= TARGET_KAFKA_FPS
    return result
