"""`vistream label`: a class label for a frame or a track, as a record on the bus.

The record goes to the index stage's label topic (``labels`` in configs/index.yaml), keyed by
the stream id so that it lands on the partition of that stream's features. The index applies
it when it reads it: at once if the frame or track is indexed, else when it arrives (until the
label expires). For a label applied to a served index at once, without the bus, use
``POST /labels`` on the query API (docs/retrieval.md).
"""

from __future__ import annotations

import json

import typer

from vistream.cli.main import app


@app.command("label")
def label(
    class_name: str = typer.Option(..., "--class", help="class name, e.g. car"),
    frame_id: str | None = typer.Option(None, "--frame-id", help="label this frame (or crop) id"),
    track_id: int | None = typer.Option(None, "--track-id", min=0,
                                        help="... or every feature of this track, now and later"),
    stream_id: str | None = typer.Option(None, "--stream-id",
                                         help="the track's stream (needed with --track-id; '' "
                                              "means any stream); a frame label's stream "
                                              "defaults to the frame id's prefix"),
    topic: str = typer.Option("labels", help="the index stage's label topic"),
    bootstrap: str = typer.Option("127.0.0.1:9092", help="Kafka bootstrap servers"),
    partitions: int = typer.Option(1, min=1, help="partitions if the topic must be created"),
) -> None:
    """Send a class label for a frame id or a track id to the index stage (SDOH learns from
    labelled features); prints the record sent as JSON."""
    if (frame_id is None) == (track_id is None):
        raise typer.BadParameter("give --frame-id or --track-id (exactly one)")
    if track_id is not None and stream_id is None:
        raise typer.BadParameter("--track-id needs --stream-id ('' for the track id in any stream)")
    # deferred: the bus and the wire format load numpy and the Kafka client; --help stays instant
    from vistream.pipeline.api_labels import label_record, send_label
    from vistream.pipeline.bus import TopicSpec, make_bus

    try:
        record = label_record(class_name, frame_id=frame_id, track_id=track_id,
                              stream_id=stream_id)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with make_bus("kafka", bootstrap) as bus:
        bus.create_topics([TopicSpec(topic, partitions)])
        with bus.producer() as producer:
            send_label(producer, topic, record)
    typer.echo(json.dumps({"topic": topic, "frame_id": record.frame_id or None,
                           "track_id": record.track_id, "stream_id": record.stream_id,
                           "class_name": record.class_name}))
