"""`vistream bench console`: the web console's search-with-thumbnails latency and first paint."""

from __future__ import annotations

import json
import sys

import typer

from vistream.cli.main import _logging, bench_app


@bench_app.command("console")
def bench_console(
    frames: int = typer.Option(100_000, min=100, help="frames in the index and the thumbnail "
                                                      "store"),
    dim: int = typer.Option(512, min=8, help="feature length (random unit vectors)"),
    n_bits: int = typer.Option(64, min=8, help="code length"),
    k: int = typer.Option(12, min=1, help="hits per answer (each with its thumbnail)"),
    queries: int = typer.Option(50, min=5, help="timed searches"),
    backbone: str | None = typer.Option(None, help="also time image uploads embedded by this "
                                        "backbone (e.g. resnet18; seeded random init)"),
    loads: int = typer.Option(10, min=0, help="page loads in headless Chromium for the first "
                                              "paint (0: skip; skipped without chromium)"),
) -> None:
    """Time a search answer with its thumbnails at FRAMES indexed frames over loopback HTTP
    (baseline: the bare index call, same run) and /console's first contentful paint in
    headless Chromium. Prints JSON; the last line holds the figures."""
    # deferred: loads FAISS, FastAPI, uvicorn (and torch with --backbone); --help stays instant
    from vistream.bench.console import bench_console as run

    _logging("text", "WARNING")
    result = run(frames=frames, dim=dim, n_bits=n_bits, k=k, queries=queries,
                 backbone=backbone, loads=loads, progress=sys.stderr.isatty())
    typer.echo(json.dumps(result))
