"""`vistream serve`, `vistream query` and `vistream bench index`: live retrieval."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from vistream.cli.main import _logging, app, bench_app
from vistream.models.zoo import DEFAULT_ARTIFACT, is_zoo_name, resolve


def query_backbone(backbone: str, random_init: bool) -> str | None:
    """What ``--backbone`` / ``--random-init`` mean for image queries: the shipped artifact by
    default, an artifact file, a registered backbone randomly initialised only when asked
    (``--random-init``), None for 'none'. ValueError (a usage error) otherwise."""
    b = backbone.strip()
    if b.lower() == "none":
        if random_init:
            raise ValueError("--random-init needs a backbone name, not 'none'")
        return None
    artifact = is_zoo_name(b) or b.endswith(".vsa")
    if random_init:
        if artifact:
            raise ValueError(f"--random-init takes a registered backbone name (e.g. resnet18), "
                             f"not the artifact {b!r}")
        return b
    if is_zoo_name(b):
        resolve(b)  # an unknown shipped name: ZooError (a ValueError) listing the shipped ones
        return b
    if artifact:
        if not Path(b).is_file():
            raise ValueError(f"artifact file {b} not found")
        return b
    raise ValueError(f"{b!r} is not an artifact (zoo:NAME or a .vsa file): a registered backbone "
                     f"has no trained weights here, so it runs only with --random-init (its "
                     f"vectors are then a plumbing test); default: {DEFAULT_ARTIFACT}")


@app.command()
def serve(
    config: Path | None = typer.Option(None, "--config", "-c", help="pipeline YAML with an index "
                                       "(type: hashing) stage"),
    stage: str | None = typer.Option(None, "--stage", help="name of the index stage in the config"),
    snapshot: Path | None = typer.Option(None, "--snapshot",
                                         help="serve this snapshot folder read-only instead (a "
                                         "--config then only names the features stage)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; beyond loopback (e.g. "
                             "0.0.0.0) the server needs a write token in VISTREAM_API_TOKEN"),
    port: int = typer.Option(8080, min=0, max=65535),
    group: str | None = typer.Option(None, help="consumer group for the index stage (default: "
                                     "the config's); give each server its own to hold the whole "
                                     "index"),
    backbone: str = typer.Option(DEFAULT_ARTIFACT, help="what embeds image queries when the "
                                 "config has no features stage: a shipped artifact (zoo:NAME, "
                                 "`vistream artifacts list`) or an artifact file (.vsa); with "
                                 "--random-init a registered backbone name (e.g. resnet18); "
                                 "'none' turns image search off"),
    random_init: bool = typer.Option(False, "--random-init", help="run --backbone (a registered "
                                     "backbone name) randomly initialised with --seed: a smoke "
                                     "test of the plumbing, its vectors mean nothing"),
    input_size: int = typer.Option(224, min=8, help="input size (pixels) of a --random-init "
                                   "backbone (artifacts carry their own)"),
    seed: int = typer.Option(0, help="seed of the --random-init backbone"),
    max_upload_bytes: int = typer.Option(8 * 1024 * 1024, min=1),
    max_pixels: int = typer.Option(4096 * 4096, min=1),
    max_k: int = typer.Option(1000, min=1),
    max_body_bytes: int = typer.Option(2 * 1024 * 1024, min=1, help="largest JSON request body "
                                       "(413 above it, before it is read)"),
    threads: int = typer.Option(1, min=1, help="FAISS (OpenMP) threads per search; requests "
                                "already run in parallel threads"),
    log_format: str = typer.Option("text", "--log-format"),
) -> None:
    """Run the query API: next to a live index stage (`--config` and `--stage`: the stage runs
    through its StageRunner in a background thread and the API shares its index), or over a
    snapshot folder, read-only (`--snapshot`). Over a sharded index stage (`params: {sharded:
    true}`, Kafka) it runs no index itself: it fans each query out to the replicas announced
    on the stage's registry topic and merges (see docs/retrieval.md, "Sharded on Kafka").

    The endpoints that write (POST /labels, POST and DELETE /tracks) need `Authorization:
    Bearer <token>` when the environment variable VISTREAM_API_TOKEN holds a token (16
    characters at least); without one the server only listens on loopback addresses."""
    # deferred: FastAPI, uvicorn (and FAISS through the index); --help stays instant
    from vistream.pipeline.serve import serve as run
    from vistream.pipeline.serve import write_token
    from vistream.pipeline.service import ServiceLimits

    _logging(log_format)
    if snapshot is None and config is None:
        raise typer.BadParameter("give --config (with --stage) or --snapshot")
    try:
        backbone = query_backbone(backbone, random_init)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--backbone") from None
    try:
        token = write_token(host)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    limits = ServiceLimits(max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, max_k=max_k,
                           max_body_bytes=max_body_bytes)
    run(config, stage, snapshot, host=host, port=port, group=group, backbone=backbone,
        input_size=input_size, seed=seed, limits=limits, threads=threads,
        echo=lambda s: typer.echo(s, err=True), api_token=token)


@app.command()
def query(
    image: Path | None = typer.Argument(None, help="a JPEG or PNG image to search with"),
    frame: str | None = typer.Option(None, "--frame", help="search by an indexed frame id"),
    k: int = typer.Option(10, help="how many neighbours"),
    url: str = typer.Option("http://127.0.0.1:8080", help="the query service"),
    timeout: float = typer.Option(30.0, help="seconds"),
) -> None:
    """Ask a running `vistream serve` for the neighbours of an image or of a frame id; prints
    the JSON answer."""
    import httpx

    if (image is None) == (frame is None):
        raise typer.BadParameter("give either IMAGE or --frame ID")
    try:
        with httpx.Client(base_url=url, timeout=timeout) as client:
            if frame is not None:
                r = client.get("/search/frame", params={"frame_id": frame, "k": k})
            else:
                if not image.is_file():
                    raise typer.BadParameter(f"{image} is not a file")
                with open(image, "rb") as f:
                    r = client.post("/search/image", params={"k": k},
                                    files={"image": (image.name, f, "application/octet-stream")})
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(2) from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text
        if isinstance(detail, list):  # validation errors: one item per field
            detail = "; ".join(f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg')}"
                               for d in detail if isinstance(d, dict))
        typer.echo(f"error {r.status_code}: {detail}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(r.json(), indent=1))


@bench_app.command("index")
def bench_index(
    n: int = typer.Option(1_000_000, min=1000, help="codes in the search benchmark"),
    n_bits: int = typer.Option(64, min=8, help="code length"),
    queries: int = typer.Option(1000, min=10, help="timed queries per measurement"),
    k: int = typer.Option(10, min=1),
    ingest_rate: float = typer.Option(10_000, min=0, help="codes/s added during the ingest run"),
    ingest_seconds: float = typer.Option(5.0, min=0.5),
    reencode_n: int = typer.Option(1_000_000, min=0, help="features in the re-encode run (0: skip)"),
    reencode_dim: int = typer.Option(512, min=8),
    exact_sample: int = typer.Option(50, min=1, help="queries checked against brute force"),
    threads: int = typer.Option(1, min=1, help="FAISS (OpenMP) threads for searches"),
    reencode_threads: int = typer.Option(1, min=1, help="BLAS threads while re-encoding"),
    reencode_qps: float = typer.Option(100.0, min=0, help="query load during the paced re-encode "
                                       "run (a second run always searches back to back); 0 skips "
                                       "the paced run"),
    http: bool = typer.Option(True, "--http/--no-http", help="also time searches over HTTP"),
    seed: int = typer.Option(0),
    shards: str = typer.Option("", help="e.g. 1,2,4: instead, the sharded index with that many "
                               "shard processes (fan-out, exactness, ingest scaling, recovery "
                               "of a killed replica; uses --n, --n-bits, --queries, --k)"),
    partitions: int = typer.Option(4, min=1, help="partitions dealt to the shards (--shards)"),
    bootstrap: str | None = typer.Option(None, help="with --shards: a Kafka broker; recovery_s "
                                         "then comes from a real rebalance (two `vistream "
                                         "stage` replicas, one SIGKILLed)"),
    kafka_n: int = typer.Option(40_000, min=100, help="rows of the Kafka recovery run"),
) -> None:
    """Top-k latency of the live index's search path vs a bare FAISS IndexBinaryFlat (same
    codes, same queries), exactness vs brute force, latency while ingesting, and the re-encode
    and swap after a model update. With --shards 1,2,4: the sharded index instead (one process
    per shard replica, fan-out queries, exact merge, ingest scaling, a killed replica's
    recovery; see docs/retrieval.md). Prints JSON; the last line holds the figures."""
    _logging("text", "WARNING")
    if shards:
        # deferred: loads FAISS and spawns shard processes; --help stays instant
        from vistream.bench.shards import bench_shards

        try:
            counts = tuple(int(x) for x in shards.split(",") if x.strip())
            result = bench_shards(counts, n=n, n_bits=n_bits, partitions=partitions,
                                  queries=queries, k=k, seed=seed, bootstrap=bootstrap,
                                  kafka_n=kafka_n, echo=lambda s: typer.echo(s, err=True))
        except (ValueError, RuntimeError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(json.dumps(result))
        return
    # deferred: loads FAISS, FastAPI and uvicorn; --help stays instant
    from vistream.bench.index import bench_index as run

    result = run(n=n, n_bits=n_bits, queries=queries, k=k, ingest_rate=ingest_rate,
                 ingest_seconds=ingest_seconds, reencode_n=reencode_n, reencode_dim=reencode_dim,
                 exact_sample=exact_sample, threads=threads, reencode_threads=reencode_threads,
                 reencode_qps=reencode_qps,
                 http=http, seed=seed, echo=lambda s: typer.echo(s, err=True))
    typer.echo(json.dumps(result))
    sys.stdout.flush()
