"""What ``vistream demo`` measures against the ground truth of its classed clip: tracking
(IDF1 through py-motmetrics, per-target coverage and re-acquisition), retrieval (mAP of held-out
crop queries against the live index) and deblurring (PSNR gained on the deblurred frames).

Choices made:

* **Tracking**: every frame's ``track_state`` rows that are not ``lost`` are the hypotheses;
  the ground truth is the ink box of every present object; a match needs IoU >= 0.3 (as
  ``vistream eval mot`` scores its seeded clips). A target is *lost for good* when, over the
  last ``tail`` frames in which it is present (at least 10), none is matched: it was visible,
  and never tracked or re-acquired until it left or the clip ended.
* **Which object a track is**: the ground-truth object it is matched to most often (a track
  matched to none is a false track). This is what a user labelling tracks does by eye.
* **Retrieval**: every object is *labelled* or *held out* (seeded, about half, at least one of
  each per class). The demo labels the tracks of the labelled objects with their class. The
  queries are crops (index rows) of held-out objects, at most ``per_object`` per object, evenly
  spread over its track; each query ranks the rows of every *other* object (and of false
  tracks, never relevant), so an object never finds itself; relevant = same class. mAP over
  the whole ranking (``models.hashing.evaluate.retrieval_metrics``), with the codes the index
  holds at the time: the LSH warm start before the labels, SDOH after its swap.
* **Deblurring**: PSNR against the clip's sharp frame (no motion blur, no sensor noise) of the
  frame as ingested and of the deblur stage's output, on the frames the stage deblurred; the
  gain is their mean difference in dB.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import motmetrics as mm
import numpy as np

from vistream.models.data.classed import ClassedSequence
from vistream.models.hashing.base import hamming_distances
from vistream.models.hashing.evaluate import retrieval_metrics
from vistream.models.tracking.mot import IOU_SEEDED, accumulate
from vistream.pipeline.bus import Bus
from vistream.pipeline.wire import Record, decode_message
from vistream.stages.records import Message

__all__ = ["TrackScore", "deblur_gain", "read_topic", "retrieval_map", "split_objects",
           "track_scores"]

_MATCHED = ("MATCH", "SWITCH", "TRANSFER", "ASCEND", "MIGRATE")


def read_topic(bus: Bus, topic: str, accept: tuple[str, ...], group: str | None = None
               ) -> list[Message]:
    """Every record of ``topic`` as it stands, decoded (a reader of its own, nothing committed)."""
    out: list[Message] = []
    ends = sum(bus.end_offsets(topic).values())
    with bus.consumer([topic], group or f"demo-score-{topic}") as c:
        seen, idle = 0, 0
        while seen < ends and idle < 20:
            recs = c.poll(1000, 0.1)
            idle = 0 if recs else idle + 1
            for r in recs:
                seen += 1
                out.append(decode_message(Record(r.topic, r.partition, r.offset, r.key, r.value,
                                                 r.headers), accept=accept))
    return out


@dataclass
class TrackScore:
    idf1: float
    mota: float
    switches: int
    precision: float
    recall: float
    #: per ground-truth object (0-based): frames present, frames matched, lost for good
    present: list[int] = field(default_factory=list)
    matched: list[int] = field(default_factory=list)
    lost_for_good: list[int] = field(default_factory=list)
    #: track id -> ground-truth object index (0-based); tracks matched to none are absent
    track_object: dict[int, int] = field(default_factory=dict)
    n_tracks: int = 0
    #: (n_frames, n_objects) bool: object matched in that frame
    matched_frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))

    def as_dict(self) -> dict[str, Any]:
        return {"idf1": round(self.idf1, 4), "mota": round(self.mota, 4),
                "id_switches": self.switches, "precision": round(self.precision, 4),
                "recall": round(self.recall, 4), "tracks": self.n_tracks,
                "objects": len(self.present), "lost_for_good": self.lost_for_good}


def track_scores(states: list[Message], seq: ClassedSequence, tail: int = 10,
                 iou: float = IOU_SEEDED) -> TrackScore:
    by_seq = {int(s.seq): s for s in states}
    acc = mm.MOTAccumulator(auto_id=False)
    hyp_ids: set[int] = set()
    for t in range(seq.n_frames):
        st = by_seq.get(t)
        ids, boxes = np.zeros(0, np.int64), np.zeros((0, 4))
        if st is not None:
            keep = ~np.asarray(st.lost, bool) & np.isfinite(np.asarray(st.boxes)).all(axis=1)
            ids, boxes = np.asarray(st.target_ids)[keep], np.asarray(st.boxes, np.float64)[keep]
            hyp_ids.update(int(i) for i in ids)
        gt_ids, gt_boxes = seq.ground_truth(t)
        accumulate(acc, t, gt_ids, gt_boxes, ids, boxes, iou)
    mh = mm.metrics.create()
    row = mh.compute(acc, metrics=["idf1", "mota", "num_switches", "precision", "recall"],
                     name="demo").iloc[0]
    ev = acc.mot_events
    hits = ev[ev["Type"].isin(_MATCHED)]
    k = len(seq.ids)
    matched = np.zeros((seq.n_frames, k), bool)
    votes: dict[int, Counter] = {}
    for (frame, _), oid, hid in zip(hits.index, hits["OId"], hits["HId"]):
        matched[int(frame), int(oid) - 1] = True
        votes.setdefault(int(hid), Counter())[int(oid) - 1] += 1
    present = seq.present
    lost = []
    for i in range(k):
        frames = np.flatnonzero(present[:, i])
        if len(frames) >= tail and not matched[frames[-tail:], i].any():
            lost.append(i)
    return TrackScore(
        idf1=_num(row["idf1"]), mota=_num(row["mota"]), switches=int(row["num_switches"]),
        precision=_num(row["precision"]), recall=_num(row["recall"]),
        present=present.sum(0).astype(int).tolist(), matched=matched.sum(0).astype(int).tolist(),
        lost_for_good=lost, track_object={h: c.most_common(1)[0][0] for h, c in votes.items()},
        n_tracks=len(hyp_ids), matched_frames=matched)


def _num(v: Any) -> float:
    v = float(v)
    return 0.0 if math.isnan(v) else v


def split_objects(classes: np.ndarray, seed: int, share: float = 0.5) -> np.ndarray:
    """Bool per object: labelled (True) or held out. About ``share`` of each class is labelled,
    at least one object of a class with two or more is held out and one labelled."""
    rng = np.random.default_rng(seed + 4242)
    labelled = np.zeros(len(classes), bool)
    for c in np.unique(classes):
        idx = rng.permutation(np.flatnonzero(classes == c))
        n = int(round(share * len(idx)))
        n = min(max(n, 1), len(idx) - 1) if len(idx) > 1 else 1
        labelled[idx[:n]] = True
    return labelled


def _row_track(frame_id: str) -> int | None:
    head, sep, tail = frame_id.rpartition("#t")
    return int(tail) if sep and tail.isdigit() else None


def retrieval_map(frame_ids: list[str], codes: np.ndarray, track_object: dict[int, int],
                  classes: np.ndarray, held_out: np.ndarray, per_object: int = 40,
                  curve_k: int = 200) -> dict[str, Any]:
    """mAP of held-out crop queries against the index's rows; see the module docstring."""
    obj = np.array([track_object.get(t, -1) if (t := _row_track(f)) is not None else -1
                    for f in frame_ids], np.int64)
    cls = np.where(obj >= 0, classes[np.maximum(obj, 0)], -1)
    aps, prec, chance, n_queries = [], [], [], 0
    for o in np.flatnonzero(held_out):
        rows = np.flatnonzero(obj == o)
        if not len(rows):
            continue
        q = rows[np.unique(np.linspace(0, len(rows) - 1, min(per_object, len(rows))).round()
                           .astype(int))]
        db = np.flatnonzero(obj != o)
        if not (cls[db] == classes[o]).any():
            continue
        m = retrieval_metrics(codes[q], codes[db], np.full(len(q), classes[o]),
                              np.where(cls[db] >= 0, cls[db], -2), topk=len(db))
        aps.append(m["mAP"] * len(q))
        chance.append(float((cls[db] == classes[o]).mean()) * len(q))
        n_queries += len(q)
        rel = cls[db][np.argsort(hamming_distances(codes[q], codes[db]), axis=1,
                                 kind="stable")] == classes[o]
        k = min(curve_k, len(db))
        prec.append((np.cumsum(rel[:, :k], axis=1) / np.arange(1, k + 1)).sum(0))
    k = min(len(p) for p in prec) if prec else 0
    curve = (np.sum([p[:k] for p in prec], axis=0) / n_queries).round(4).tolist() if k else []
    return {"mAP": float(sum(aps) / n_queries) if n_queries else float("nan"),
            "queries": n_queries, "rows": len(frame_ids),
            "rows_of_objects": int((obj >= 0).sum()), "precision_at_k": curve,
            # what a random ranking scores (about the share of relevant rows)
            "chance": float(sum(chance) / n_queries) if n_queries else float("nan")}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def deblur_gain(inputs: dict[int, np.ndarray], outputs: dict[int, np.ndarray],
                seq: ClassedSequence) -> dict[str, Any]:
    """PSNR (dB) against the sharp frames, before and after, on the deblurred frames."""
    rows = []
    for t in sorted(outputs):
        if t not in inputs or not 0 <= t < seq.n_frames:
            continue
        sharp = seq.sharp(t)
        rows.append((t, psnr(inputs[t], sharp), psnr(outputs[t], sharp)))
    gain = float(np.mean([o - i for _, i, o in rows])) if rows else float("nan")
    return {"frames": [r[0] for r in rows], "psnr_in": [round(r[1], 3) for r in rows],
            "psnr_out": [round(r[2], 3) for r in rows], "gain_db": gain}
