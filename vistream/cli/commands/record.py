"""``vistream record TOPIC OUT.mp4``: a frames topic (ingested, deblurred or annotated frames)
into a video file (issue 24, item 2). The work is :func:`vistream.pipeline.record.record_topic`."""

from __future__ import annotations

from pathlib import Path

import typer

from vistream.cli.main import app


@app.command("record")
def record(
    topic: str = typer.Argument(..., help="a frames topic, e.g. annotated or frames"),
    out: Path = typer.Argument(..., help="video file to write (.mp4, or .avi for MJPG)"),
    bootstrap: str = typer.Option("127.0.0.1:9092", "--bootstrap", help="Kafka bootstrap servers"),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1,
                                          help="stop after this many frames"),
    fps: float = typer.Option(25.0, "--fps", min=0.1, help="frame rate of the file"),
    stream_id: str | None = typer.Option(None, "--stream-id",
                                         help="the stream to record (default: the first met)"),
    reorder: int = typer.Option(64, "--reorder", min=1,
                                help="frames held to write them in sequence order"),
    idle_timeout: float = typer.Option(10.0, "--idle-timeout", min=0.1,
                                       help="give up after this many seconds without a record"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Write the frames of TOPIC, from its oldest record to its end as it stands when the
    command starts, to OUT in sequence order (one stream; a frame re-emitted under the same id
    replaces the earlier copy). Reads with a group of its own and commits nothing."""
    # deferred: the bus, cv2 and the wire format are heavy; --help stays instant
    from vistream.pipeline.bus import make_bus
    from vistream.pipeline.record import record_topic

    with make_bus("kafka", bootstrap) as bus:
        rep = record_topic(bus, topic, out, fps=fps, max_frames=max_frames, stream_id=stream_id,
                           reorder=reorder, idle_timeout=idle_timeout, progress=progress)
    for p in rep.problems:
        typer.echo(f"warning: {p}", err=True)
    if not rep.frames:
        typer.echo(f"no frames in {topic}: nothing written", err=True)
        raise typer.Exit(1)
    typer.echo(f"wrote {rep.frames} frames of stream {rep.stream_id} "
               f"({rep.size[0]}x{rep.size[1]}) to {rep.path} in {rep.seconds:.1f} s; "
               f"replaced {rep.replaced}, late {rep.late}, undecodable {rep.undecodable}, "
               f"other streams {rep.other_streams}")
