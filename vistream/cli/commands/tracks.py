"""``vistream track start|stop``: start or stop a target by hand, as a ``track_init`` record on
the bus.

The record goes to the track stage's init topic (``--topic``), keyed by the stream id so that
it lands on the partition of that stream's frames (the init topic is co-partitioned with the
frame topic). The track stage applies it when it reads it: on the given frame (``--frame-id``
/ ``--seq``) or on the stream's next frame. Without ``--track-id``, ``start`` lets the stage
pick the next free id (it shows in the stage's ``track_state`` records). The same records come
from ``POST /tracks`` and ``DELETE /tracks/{id}`` on the query API (pipeline/api_tracks.py).
"""

from __future__ import annotations

import json

import typer

from vistream.cli.main import app

track_app = typer.Typer(help="Start or stop a tracked target by hand (a track_init record to "
                             "the track stage's init topic).", no_args_is_help=True)
app.add_typer(track_app, name="track")

TOPIC = typer.Option("track-inits", "--topic", help="the track stage's init topic")
STREAM = typer.Option(..., "--stream-id", help="the stream the target is in")
BOOTSTRAP = typer.Option("127.0.0.1:9092", "--bootstrap", help="Kafka bootstrap servers")
PARTITIONS = typer.Option(1, "--partitions", min=1,
                          help="partitions if the topic must be created (as many as the "
                               "frame topic's)")


def _box(text: str) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"--box must be x,y,w,h numbers, got {text!r}") from None
    return vals


def _send(record, topic: str, bootstrap: str, partitions: int) -> None:
    # deferred: the bus loads the Kafka client; --help stays instant
    from vistream.pipeline.api_tracks import send_track_init
    from vistream.pipeline.bus import TopicSpec, make_bus

    with make_bus("kafka", bootstrap) as bus:
        bus.create_topics([TopicSpec(topic, partitions)])
        with bus.producer() as producer:
            send_track_init(producer, topic, record)


@track_app.command("start")
def track_start(
    box: str = typer.Option(..., "--box", help="x,y,w,h in pixels, e.g. 312,204,12,12"),
    stream_id: str = STREAM,
    track_id: int | None = typer.Option(None, "--track-id", min=0,
                                        help="restart this id (default: the stage picks one)"),
    frame_id: str = typer.Option("", "--frame-id", help="the frame the box belongs to "
                                                        "(default: the stream's next frame)"),
    seq: int = typer.Option(-1, "--seq", min=-1, help="that frame's sequence number"),
    topic: str = TOPIC, bootstrap: str = BOOTSTRAP, partitions: int = PARTITIONS,
) -> None:
    """Start (or restart) a target at a box; prints the record sent as JSON."""
    # deferred: the record helpers load numpy; --help stays instant
    from vistream.pipeline.api_tracks import start_record

    try:
        record = start_record(stream_id, _box(box), track_id, frame_id, seq)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    _send(record, topic, bootstrap, partitions)
    typer.echo(json.dumps({"action": "start", "topic": topic, "stream_id": stream_id,
                           "track_id": track_id, "box": record.boxes[0].tolist(),
                           "frame_id": frame_id or None, "seq": seq}))


@track_app.command("stop")
def track_stop(
    track_id: int = typer.Option(..., "--track-id", min=0, help="the target to stop"),
    stream_id: str = STREAM,
    topic: str = TOPIC, bootstrap: str = BOOTSTRAP, partitions: int = PARTITIONS,
) -> None:
    """Stop a target; prints the record sent as JSON."""
    # deferred: the record helpers load numpy; --help stays instant
    from vistream.pipeline.api_tracks import stop_record

    try:
        record = stop_record(stream_id, track_id)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    _send(record, topic, bootstrap, partitions)
    typer.echo(json.dumps({"action": "stop", "topic": topic, "stream_id": stream_id,
                           "track_id": track_id}))
