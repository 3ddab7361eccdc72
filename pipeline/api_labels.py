"""Labels and index figures on the query API: ``POST /labels``, ``GET /stats``; and the label
records ``vistream label`` produces.

Choices made:

* ``POST /labels`` applies the label to the index the app serves (``app.state.index``). Next to
  a pipeline (``vistream serve --config``) that *is* the index stage's object, so the label
  takes effect at once, for the search answers and for SDOH's next fit. It lives in that
  index and in its next snapshot; it is not written to the bus, so a restart that replays
  from an older snapshot does not see it. Labels that must survive anything go through the
  bus: ``vistream label`` (:func:`send_label`).
* The answer says what happened: 200 with ``status`` ``applied`` (rows labelled now) or
  ``unchanged`` (the frame or track had a label already: the first label wins), 202 with
  ``pending`` (no such frame or track indexed yet: the label waits until it arrives or expires,
  see :mod:`vistream.models.hashing.labels`). 422 for a malformed body (no target or two, an
  empty or over-long class name, a negative track id, unknown fields); 409 on a read-only
  index (a served snapshot).
* ``GET /stats`` reports what the index learns from and with: the hash model answering
  searches and its version, the configured model, codes indexed, labelled rows, label records
  pending/matched/expired, the class names, and the times of the last fit and the last swap
  (ISO 8601, UTC; null before the first).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from vistream.pipeline.api_common import MAX_ID, error_responses, integral, require_token
from vistream.pipeline.bus import Producer
from vistream.pipeline.wire import encode_message
from vistream.stages.records import MAX_CLASS_NAME, Label

router = APIRouter(tags=["labels"])


# --------------------------------------------------------------------------- label records


def label_record(class_name: str, frame_id: str | None = None, track_id: int | None = None,
                 stream_id: str | None = None) -> Label:
    """A checked label record. A frame label's stream defaults to the frame id's prefix
    (``cam0:00000012`` -> ``cam0``), so it is keyed, and partitioned, like its features."""
    if stream_id is None:
        stream_id = frame_id.split(":", 1)[0] if frame_id and ":" in frame_id else ""
    return Label(frame_id or "", stream_id, track_id=track_id, class_name=class_name).check()


def send_label(producer: Producer, topic: str, label: Label) -> None:
    """Produce one label record to ``topic`` and wait until the bus has it."""
    out = encode_message(label.check())
    producer.send(topic, out.value, out.key, out.headers)
    producer.flush()


# --------------------------------------------------------------------------- POST /labels


#: the characters Python's ``str.strip`` or JSON Schema's ``\\s`` count as blank: a class name
#: needs one character outside them (one explicit set, so that the schema's pattern, pydantic
#: and the strip that follows agree on every character)
BLANK = ("\\t\\n\\v\\f\\r \\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f"
         "\\u205f\\u3000\\ufeff")
#: exactly one target: a frame id, or a track id (JSON Schema for what _one_target checks)
ONE_TARGET = [
    {"required": ["frame_id"], "properties": {
        "frame_id": {"type": "string", "minLength": 1, "maxLength": 1000},
        "track_id": {"type": "null"}}},
    {"required": ["track_id"], "properties": {
        "track_id": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
        "frame_id": {"type": "null"}}}]


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": ONE_TARGET})

    frame_id: str | None = Field(None, min_length=1, max_length=1000,
                                 description="label this indexed frame (or crop) id")
    track_id: StrictInt | None = Field(None, ge=0, le=MAX_ID,
                                       description="... or every row of this track")
    stream_id: str | None = Field(None, max_length=1000,
                                  description="the track's stream (none: the track id in any "
                                              "stream)")
    class_name: str = Field(min_length=1, max_length=MAX_CLASS_NAME, pattern=f"[^{BLANK}]",
                            description="the class; blanks around it are dropped")

    _integral = field_validator("track_id", mode="before")(integral)

    @model_validator(mode="after")
    def _one_target(self) -> LabelIn:
        if (self.frame_id is None) == (self.track_id is None):
            raise ValueError("give frame_id or track_id (exactly one)")
        if not self.class_name.strip():  # the pattern refuses it first; kept for clarity
            raise ValueError("class_name must not be blank")
        return self


class LabelOut(BaseModel):
    status: str = Field(description="applied, pending (waiting for its frame or track) or "
                                    "unchanged (it had a label already: the first wins)")
    rows_labelled: int = Field(description="rows that got this label now")
    class_name: str
    class_id: int = Field(description="the integer label the index learns from")
    frame_id: str | None = None
    track_id: int | None = None
    stream_id: str | None = None
    labels_pending: int
    training_queue: int = Field(description="labelled rows not yet learned from")
    model: str | None
    model_version: int


@router.post("/labels", response_model=LabelOut, dependencies=[Depends(require_token)],
             responses={202: {"model": LabelOut,
                              "description": "kept until its frame or track is indexed"},
                        **error_responses(409, 422)})
def post_label(request: Request, response: Response, body: LabelIn = Body(...)) -> LabelOut:
    """Label a frame id, or every row (now and later) of a track, with a class name."""
    index = request.app.state.index
    try:
        out = index.apply_label(frame_id=body.frame_id, track_id=body.track_id,
                                stream_id=body.stream_id, class_name=body.class_name.strip())
    except RuntimeError as exc:  # read-only (a served snapshot) or closed
        raise HTTPException(409, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    if out.status == "pending":
        response.status_code = 202
    st = index.label_stats()
    return LabelOut(status=out.status, rows_labelled=out.rows, class_name=out.class_name or "",
                    class_id=out.label, frame_id=body.frame_id, track_id=body.track_id,
                    stream_id=body.stream_id, labels_pending=st["labels_pending"],
                    training_queue=st["training_queue"], model=st["model"],
                    model_version=st["model_version"])


# --------------------------------------------------------------------------- GET /stats


class StatsOut(BaseModel):
    model: str | None = Field(description="hash model answering searches (lsh in warm start)")
    model_version: int
    configured_model: str = Field(description="the model the index learns")
    warm_start: bool
    n_bits: int
    codes_indexed: int
    labelled: int = Field(description="indexed rows with a label")
    labels_pending: int = Field(description="label records waiting for their frame or track")
    labels_matched: int
    labels_expired: int
    training_queue: int = Field(description="labelled rows not yet learned from")
    classes: list[str]
    model_updates: int
    swaps: int
    updating: bool
    last_fit_at: str | None = Field(description="end of the last model fit (ISO 8601, UTC)")
    last_swap_at: str | None = Field(description="last swap of re-encoded codes (ISO 8601)")


def _iso(t: Any) -> str | None:
    return None if t is None else datetime.fromtimestamp(float(t), UTC).isoformat()


@router.get("/stats", response_model=StatsOut)
def stats(request: Request) -> StatsOut:
    """The hash model, what it has learned from, and when it last changed."""
    st = dict(request.app.state.index.label_stats())
    st["last_fit_at"], st["last_swap_at"] = _iso(st["last_fit_at"]), _iso(st["last_swap_at"])
    return StatsOut(**st)
