"""Tracks by hand on the query API: ``POST /tracks`` starts a target, ``DELETE
/tracks/{track_id}`` stops one; and the ``track_init`` records ``vistream track start|stop``
produces.

Choices made:

* The API does not track: the track stage (its lifecycle owns ids, lost and ended targets)
  does. Both endpoints *produce* a :class:`~vistream.stages.records.TrackInit` record to the
  track stage's init topic, keyed by stream id (the init topic is co-partitioned with the
  frame topic, so the record reaches the replica that tracks that stream), and answer **202
  Accepted**: the record is on the bus; the target starts when the stage reads it. The
  producer and topic are given to the app (:func:`attach_producer`); without them the
  endpoints answer 503.
* ``track_id`` is optional: without it the record carries :attr:`TrackInit.NEW` and the
  stage picks the next free id (it shows in its ``track_state`` records); the answer then
  has no ``track_id`` (answers leave out what is not known rather than send null). With it,
  a live target of that id is restarted at the box.
* ``frame_id`` / ``seq`` are optional: without them the box applies to the stream's next
  frame the stage processes. With them it applies to that frame (the stage keeps a few
  recent frames and catches up).
* Bad boxes are 422 (validated body; parsed by the endpoint so that NaN and Infinity, which
  Python's JSON parser accepts, are refused rather than echoed into an unencodable error
  answer): non-finite values, width or height not positive,
  a side over ``MAX_BOX_SIDE`` px, a corner beyond ``MAX_COORD`` (no frame is that large).
  A malformed body, unknown fields or an empty stream id are 422 too.
"""

from __future__ import annotations

import json
import math
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
)
from starlette.concurrency import run_in_threadpool

from vistream.pipeline.api_common import (
    MAX_ID,
    error_responses,
    integral,
    require_token,
    validation_items,
)
from vistream.pipeline.bus import Producer
from vistream.pipeline.wire import encode_message
from vistream.stages.records import TrackInit

router = APIRouter(tags=["tracks"])

#: the largest box side accepted (px): the detector and tracker work on small objects; a
#: larger box is a mistake (or a coordinate in the wrong unit)
MAX_BOX_SIDE = 4096.0
#: no frame is larger than this (px) in either direction
MAX_COORD = 65536.0
DEFAULT_TOPIC = "track-inits"
#: the largest sequence number taken (2**53: exact as a JSON number in any parser)
MAX_SEQ = 2**53


# --------------------------------------------------------------------------- records


def check_box(box) -> tuple[float, float, float, float]:
    """x, y, w, h as floats; ValueError when not finite, not positive, or too large."""
    try:
        vals = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be 4 numbers x, y, w, h, got {box!r}") from None
    if len(vals) != 4:
        raise ValueError(f"box must be 4 numbers x, y, w, h, got {len(vals)}")
    if not all(map(math.isfinite, vals)):
        raise ValueError(f"box values must be finite, got {vals}")
    x, y, w, h = vals
    if w <= 0 or h <= 0:
        raise ValueError(f"box width and height must be positive, got {w} x {h}")
    if w > MAX_BOX_SIDE or h > MAX_BOX_SIDE:
        raise ValueError(f"box sides must be at most {MAX_BOX_SIDE:g} px, got {w:g} x {h:g}")
    if not (abs(x) <= MAX_COORD and abs(y) <= MAX_COORD):
        raise ValueError(f"box corner {x:g}, {y:g} is outside any frame")
    return vals


def start_record(stream_id: str, box, track_id: int | None = None, frame_id: str = "",
                 seq: int = -1) -> TrackInit:
    """A checked record that starts (or restarts) a target at ``box``."""
    if not stream_id:
        raise ValueError("stream_id must not be empty")
    if track_id is not None and track_id < 0:
        raise ValueError(f"track_id must be >= 0, got {track_id}")
    tid = TrackInit.NEW if track_id is None else int(track_id)
    return TrackInit(frame_id=frame_id, stream_id=stream_id, seq=seq,
                     boxes=[check_box(box)], target_ids=[tid])


def stop_record(stream_id: str, track_id: int) -> TrackInit:
    """A record that stops target ``track_id`` of ``stream_id``."""
    if not stream_id:
        raise ValueError("stream_id must not be empty")
    if track_id < 0:
        raise ValueError(f"track_id must be >= 0, got {track_id}")
    return TrackInit(frame_id="", stream_id=stream_id, seq=-1, drop_ids=[int(track_id)])


def send_track_init(producer: Producer, topic: str, record: TrackInit) -> None:
    """Produce one record to ``topic`` (keyed by its stream id) and wait until the bus has it."""
    out = encode_message(record)
    producer.send(topic, out.value, out.key, out.headers)
    producer.flush()


def attach_producer(app: FastAPI, producer: Producer, topic: str = DEFAULT_TOPIC) -> None:
    """Give the app the producer and init topic ``POST /tracks`` writes to."""
    app.state.track_producer = producer
    app.state.track_topic = topic


# --------------------------------------------------------------------------- endpoints


#: a box's corner and side, as the schema declares them (check_box says the same in words)
Coord = Annotated[StrictFloat, Field(ge=-MAX_COORD, le=MAX_COORD)]
Side = Annotated[StrictFloat, Field(gt=0, le=MAX_BOX_SIDE)]


class TrackStartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream_id: str = Field(min_length=1, max_length=1000)
    box: tuple[Coord, Coord, Side, Side] = Field(description="x, y, w, h in pixels")
    track_id: StrictInt | None = Field(None, ge=0, le=MAX_ID, description="restart this id "
                                       "(default: the stage picks a new one)")
    frame_id: str = Field("", max_length=1000, description="the frame the box belongs to "
                                                           "(default: the next frame)")
    seq: StrictInt = Field(-1, ge=-1, le=MAX_SEQ, description="its sequence number, if known")

    _integral = field_validator("track_id", "seq", mode="before")(integral)

    @field_validator("box")
    @classmethod
    def _box(cls, box: tuple[float, ...]) -> tuple[float, ...]:
        return check_box(box)


class TrackRecordOut(BaseModel):
    status: str = Field(description="queued: the record is on the bus; the track stage "
                                    "applies it when it reads it")
    action: str
    stream_id: str
    track_id: int | None = Field(None, description="absent: the stage picks the next free id "
                                                   "(it shows in its track_state records)")
    box: list[float] | None = Field(None, description="absent for a stop")
    frame_id: str = ""
    topic: str


def _producer(request: Request) -> tuple[Producer, str]:
    producer = getattr(request.app.state, "track_producer", None)
    if producer is None:
        raise HTTPException(503, "this service has no bus producer for track records "
                                 "(pipeline.api_tracks.attach_producer)")
    return producer, getattr(request.app.state, "track_topic", DEFAULT_TOPIC)


def _send(producer: Producer, topic: str, record: TrackInit) -> None:
    try:
        send_track_init(producer, topic, record)
    except Exception as exc:  # the bus is down or refuses: the caller may retry
        raise HTTPException(503, f"could not produce the track record: {exc}") from None


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not a number JSON allows")


@router.post("/tracks", response_model=TrackRecordOut, status_code=202, openapi_extra={
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": TrackStartIn.model_json_schema()}}}},
             dependencies=[Depends(require_token)], responses=error_responses(422, 503),
             response_model_exclude_none=True)
async def post_track(request: Request) -> TrackRecordOut:
    """Start (or restart) a target at a box; the track stage reads the record from the bus.
    Body: ``{"stream_id": "cam1", "box": [x, y, w, h], "track_id": 7 (optional),
    "frame_id": "..." (optional), "seq": 12 (optional)}``."""
    producer, topic = _producer(request)
    # The body is parsed here rather than by FastAPI: its parser accepts NaN and Infinity,
    # and its 422 answer echoes the input, which then cannot be encoded (a 500).
    try:
        raw = json.loads(await request.body(), parse_constant=_reject_constant)
        body = TrackStartIn.model_validate(raw)
    except ValidationError as exc:
        # without the input: a NaN or infinity echoed back could not be encoded (a 500)
        raise HTTPException(422, validation_items(exc.errors())) from None
    except ValueError as exc:  # not JSON, or a non-finite constant
        raise HTTPException(422, f"malformed JSON body: {exc}") from None
    record = start_record(body.stream_id, body.box, body.track_id, body.frame_id, body.seq)
    await run_in_threadpool(_send, producer, topic, record)
    return TrackRecordOut(status="queued", action="start", stream_id=body.stream_id,
                          track_id=body.track_id, box=list(body.box), frame_id=body.frame_id,
                          topic=topic)


@router.delete("/tracks/{track_id}", response_model=TrackRecordOut, status_code=202,
                dependencies=[Depends(require_token)], responses=error_responses(422, 503),
                response_model_exclude_none=True)
def delete_track(request: Request, track_id: int = Path(..., ge=0, le=MAX_ID),
                 stream_id: str = Query(..., min_length=1, max_length=1000)) -> TrackRecordOut:
    """Stop a target; the track stage reads the record from the bus."""
    producer, topic = _producer(request)
    _send(producer, topic, stop_record(stream_id, track_id))
    return TrackRecordOut(status="queued", action="stop", stream_id=stream_id, track_id=track_id,
                    topic=topic)
