"""``vistream chaos`` and ``vistream outage``: fault injection on a broker of their own
(docs/reliability.md). Each prints progress on stderr and JSON whose last line holds the figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vistream.cli.main import _logging, app


def _say(msg: str) -> None:
    typer.echo(f"[{msg}]", err=True)


@app.command("chaos")
def chaos(
    config: Path = typer.Argument(..., help="pipeline YAML on Kafka, e.g. configs/chaos-kafka.yaml"),
    minutes: float = typer.Option(5.0, "--minutes", min=0.1, help="length of the chaos run"),
    seed: int = typer.Option(0, "--seed", help="seeds the input frames and the kill schedule"),
    fps: float = typer.Option(4.0, "--fps", min=0.1, help="input frames per second"),
    kill_every: float = typer.Option(10.0, "--kill-every", min=0.5,
                                     help="mean seconds between two SIGKILLs"),
    port: int = typer.Option(29592, "--port", help="port of the runs' own broker (and port+1)"),
    work_dir: Path = typer.Option(Path("out/chaos"), "--work-dir",
                                  help="runs' configs, logs, outputs"),
) -> None:
    """Run CONFIG's stages on a broker of its own twice over the same seeded frames: once
    fault-free, once while stage processes are SIGKILLed at seeded random moments and
    restarted. Prints kills, restarts, frames, lost, duplicated in the index, dead letters
    and whether index and sinks equal the fault-free twin's."""
    # deferred: the harness loads the bus, broker and snapshot modules; --help stays instant
    from vistream.pipeline.chaos import chaos_run

    _logging()
    report = chaos_run(config, minutes=minutes, seed=seed, fps=fps, kill_every=kill_every,
                       port=port, work_dir=work_dir, progress=_say)
    typer.echo(json.dumps(report))
    ok = (report["index_identical"] and report["sinks_identical"] and report["lost"] == 0
          and report["duplicated_in_index"] == 0 and report["dead_letters"] == 0)
    raise typer.Exit(0 if ok else 1)


def _durations(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"--outages must be seconds separated by commas, got {text!r}"
                                 ) from None
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter("--outages needs one or more positive durations")
    return values


@app.command("outage")
def outage(
    outages: str = typer.Option("30", "--outages",
                                help="broker outages in seconds, comma separated: 30, 120, 25,25,25"),
    gap: float = typer.Option(5.0, "--gap", min=0, help="seconds between two outages"),
    frames: int = typer.Option(200, "--frames", min=10, help="frames fed during the run"),
    port: int = typer.Option(29692, "--port", help="port of the broker stopped and restarted"),
    work_dir: Path = typer.Option(Path("out/outage"), "--work-dir", help="logs and outputs"),
    hard: bool = typer.Option(False, "--hard", help="SIGKILL the broker instead of stopping it "
                                                    "cleanly (it recovers its logs on restart)"),
    nodes: int = typer.Option(1, "--nodes", min=1, max=9,
                              help="run on a KRaft cluster of N nodes (ports PORT..PORT+2N-1)"),
    kill_one: bool = typer.Option(False, "--kill-one",
                                  help="instead of outages: SIGKILL, mid-stream, the node leading "
                                       "the most partitions (needs --nodes 3) and keep it dead"),
    seed: int = typer.Option(0, "--seed", help="seeds the input frames"),
    feed_seconds: float | None = typer.Option(None, "--feed-seconds", min=5,
                                              help="spread the frames over N s (default: "
                                                   "30 with --kill-one, else from the outages)"),
) -> None:
    """Stop and restart a broker of its own under a running thumbnail stage and summary sink
    (separate processes) while frames keep coming. Prints, per outage, the seconds until each
    stage consumed again after the broker's return, and frames lost, duplicated at the
    sink, and stage processes that exited. With `--nodes 3 --kill-one`: one broker of three
    SIGKILLed mid-stream; prints the pause (longest stall of each stage around the kill)."""
    # deferred: the harness loads the bus and broker modules; --help stays instant
    from vistream.pipeline.outage import outage_run

    if kill_one and nodes < 2:
        raise typer.BadParameter("--kill-one needs a cluster: --nodes 3")
    _logging()
    report = outage_run(_durations(outages), gap=gap, frames=frames, port=port,
                        work_dir=work_dir, hard=hard, progress=_say, nodes=nodes,
                        kill_one=kill_one, feed_seconds=feed_seconds, seed=seed)
    typer.echo(json.dumps(report))
    ok = report["lost"] == 0 and report["sink_duplicates"] == 0 and not report["exits"]
    raise typer.Exit(0 if ok else 1)
