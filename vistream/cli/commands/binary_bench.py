"""``vistream bench binary``: the bit-packed 1-bit runtime vs torch float32 (see
:mod:`vistream.bench.binary`)."""

from __future__ import annotations

import json

import typer

from vistream.cli.main import bench_app


@bench_app.command("binary")
def bench_binary(
    threads: int = typer.Option(2, "--threads", min=1, help="torch threads = packed-kernel threads"),
    repeats: int = typer.Option(5, "--repeats", min=1, help="interleaved rounds (at least 2)"),
    quick: bool = typer.Option(False, "--quick", help="fewer calls per round (at most 3 rounds)"),
) -> None:
    """One 3x3 256->256 binary conv at 14x14 and a whole 1-bit ResNet-18 at 224x224, packed vs
    torch float32, measured interleaved in the same run; exactness; artifact bytes 1-bit vs fp32.
    Runs on the kernel chosen from the CPU's features at load (VISTREAM_KERNEL=avx512|avx2|portable
    forces one) and also times the conv on every kernel the CPU offers. The last line holds the
    figures (targets: conv >= 8x, ResNet-18 >= 4x) with `kernel`, `kernels_available` and
    `cpu_features`."""
    # deferred: loads torch; --help stays instant
    from vistream.bench.binary import bench_binary as run

    result = run(threads=threads, repeats=repeats, quick=quick, echo=typer.echo)
    typer.echo(json.dumps(result))
