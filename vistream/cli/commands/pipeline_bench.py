"""``vistream bench pipeline``: the whole pipeline, ingest to searchable, at rising rates, on
Kafka (one process per stage) and on the memory bus (see :mod:`vistream.bench.pipeline`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vistream.cli.main import _logging, bench_app


def _rates(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        rates = tuple(float(r) for r in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"--rates wants numbers separated by commas, got {text!r}") from None
    if any(r <= 0 for r in rates) or list(rates) != sorted(rates):
        raise typer.BadParameter("--rates must be positive and rising, e.g. 10,15,20,25,30,40")
    return rates


@bench_app.command("pipeline")
def bench_pipeline(
    config: Path = typer.Option(None, "--config", "-c", help="pipeline YAML with one index "
                                "(type: hashing) stage [default: configs/bench-pipeline.yaml]"),
    rates: str | None = typer.Option(None, help="frames/s of the ramp, rising, comma separated "
                                     "[default: 10,15,20,25,30,40]"),
    seconds: float = typer.Option(15.0, min=1.0, help="seconds of ingest per rate"),
    drain: float = typer.Option(10.0, min=1.0, help="seconds after a step's last frame for every "
                                "frame to become searchable"),
    topic: str = typer.Option("frames", help="the config's topic that ingest writes"),
    bootstrap: str | None = typer.Option(
        None, help="Kafka to use (default: start/reuse a local broker on --port)"),
    port: int = typer.Option(9092, help="port of the local broker to start/reuse"),
    kafka: bool = typer.Option(True, "--kafka/--no-kafka", help="run the Kafka ramp"),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="run the memory-bus ramp"),
    quick: bool = typer.Option(False, "--quick", help="a short smoke run: rates 4,8 for 4 s each"),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="a progress bar per rate (on stderr)"),
) -> None:
    """The demo-like pipeline of `configs/bench-pipeline.yaml` (thumbnails, features, detect,
    track, the live index behind `vistream serve`) fed a 640x360 clip at rising rates: on a
    real broker with one process per stage, then on the memory bus. Reports the highest
    sustained rate (no growing backlog or lag), p50/p99 latency from ingest to searchable
    (`GET /search/frame` finds the frame), CPU per stage and the bottleneck stage. The last line
    is JSON with kafka_sustained_fps, memory_sustained_fps, p50_ms, p99_ms and bottleneck.
    About 5 minutes by default (the ramp stops at the first rate not sustained)."""
    # deferred: the benchmark loads the runtime, torch (features stage) and cv2; --help stays instant
    from vistream.bench.pipeline import DEFAULT_CONFIG
    from vistream.bench.pipeline import bench_pipeline as run

    if not kafka and not memory:
        raise typer.BadParameter("nothing to run: --no-kafka and --no-memory")
    _logging("text", "WARNING")
    try:
        result = run(config or DEFAULT_CONFIG, rates=_rates(rates), seconds=seconds, drain=drain,
                     topic=topic, bootstrap=bootstrap, port=port, kafka=kafka, memory=memory,
                     quick=quick, progress=progress, echo=typer.echo)
    except (RuntimeError, TimeoutError) as exc:  # a stage died, or the pipeline never came up
        typer.echo(f"error: the benchmark stopped: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result))
