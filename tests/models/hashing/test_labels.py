"""The label book of the live index: labels by track (now and later rows), class names,
pending labels and their expiry, all of it surviving a snapshot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vistream.models.hashing.labels import LabelBook
from vistream.models.hashing.live import LiveIndex


def data(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def crops(index: LiveIndex, start: int, n: int, track: int, stream: str = "cam0",
          seed: int = 0) -> list[str]:
    """Add ``n`` crops of one track; returns their row ids."""
    ids = [f"{stream}:{i:08d}#t{track}" for i in range(start, start + n)]
    index.add(ids, data(n, seed=seed + start), tracks=[(stream, track)] * n)
    return ids


def new_index(**kw) -> LiveIndex:
    base = {"n_bits": 16, "train_chunk": 1000, "background": False}
    return LiveIndex("sdoh", **{**base, **kw})


def test_a_track_label_labels_its_rows_now_and_later():
    index = new_index()
    before = crops(index, 0, 4, track=7)
    other = crops(index, 4, 3, track=8)
    out = index.apply_label(track_id=7, stream_id="cam0", class_name="car")
    assert (out.status, out.rows, out.label, out.class_name) == ("applied", 4, 0, "car")
    later = crops(index, 7, 3, track=7)
    assert [index.label(f) for f in before + later] == [0] * 7
    assert [index.label(f) for f in other] == [None] * 3
    # the same track id in another stream is another track
    elsewhere = crops(index, 10, 2, track=7, stream="cam1")
    assert [index.label(f) for f in elsewhere] == [None, None]
    st = index.label_stats()
    assert st["labelled"] == 7 and st["labels_matched"] == 1 and st["training_queue"] == 7


def test_a_track_label_before_its_track_waits_then_matches():
    index = new_index()
    out = index.apply_label(track_id=3, stream_id="cam0", class_name="bike")
    assert out.status == "pending" and out.rows == 0
    assert index.label_stats()["labels_pending"] == 1
    rows = crops(index, 0, 5, track=3)
    assert [index.label(f) for f in rows] == [0] * 5
    st = index.label_stats()
    assert st["labels_pending"] == 0 and st["labels_matched"] == 1 and st["labelled"] == 5


def test_a_label_for_a_track_in_any_stream():
    index = new_index()
    a = crops(index, 0, 2, track=5, stream="cam0")
    out = index.apply_label(track_id=5, class_name="dog")  # no stream: any stream
    assert out.status == "applied" and out.rows == 2
    b = crops(index, 2, 2, track=5, stream="cam1")
    assert [index.label(f) for f in a + b] == [0] * 4


def test_first_label_wins_and_class_ids_are_stable():
    index = new_index()
    rows = crops(index, 0, 3, track=1)
    assert index.apply_label(track_id=1, stream_id="cam0", class_name="car").status == "applied"
    again = index.apply_label(track_id=1, stream_id="cam0", class_name="bus")
    assert again.status == "unchanged" and again.rows == 0
    assert [index.label(f) for f in rows] == [0] * 3
    assert index.class_names() == {"car": 0, "bus": 1}
    assert index.apply_label(frame_id=rows[0], class_name="bus").status == "unchanged"
    assert index.apply_label(frame_id="cam0:x", class_name=" car ").label == 0  # stripped


def test_a_new_name_never_takes_an_integer_label_seen_before():
    index = new_index()
    index.add(["a", "b"], data(2), labels=[0, 4])
    assert index.apply_label(frame_id="z", class_name="car").label == 5


def test_frame_labels_pending_matched_and_expired_by_records():
    index = new_index(label_ttl_records=10)
    assert index.apply_label(frame_id="f00", class_name="car").status == "pending"
    assert index.apply_label(frame_id="f99", class_name="car").status == "pending"
    assert index.apply_label(track_id=42, stream_id="cam0", class_name="car").status == "pending"
    assert index.label_stats()["labels_pending"] == 3
    index.add([f"f{i:02d}" for i in range(9)], data(9))  # f00 arrives; 9 rows < TTL
    st = index.label_stats()
    assert index.label("f00") == 0
    assert (st["labels_pending"], st["labels_matched"], st["labels_expired"]) == (2, 1, 0)
    index.add(["g0"], data(1, seed=1))  # the 10th row: the two others expire
    st = index.label_stats()
    assert (st["labels_pending"], st["labels_matched"], st["labels_expired"]) == (0, 1, 2)
    index.add(["f99"], data(1, seed=2))
    assert index.label("f99") is None
    crops(index, 0, 2, track=42)
    assert index.label_stats()["labelled"] == 1


def test_labels_expire_by_seconds():
    index = new_index(label_ttl_records=None, label_ttl_seconds=60)
    index.apply_label(frame_id="late", class_name="car", now=1000.0)
    index.apply_label(frame_id="later", class_name="car", now=1050.0)
    index.apply_label(frame_id="x", class_name="car", now=1061.0)  # "late" is 61 s old
    st = index.label_stats()
    assert st["labels_expired"] == 1 and st["labels_pending"] == 2
    assert index.label("late") is None and index.label("later") == 0


@pytest.mark.parametrize("kw", [
    {"class_name": "car"},
    {"frame_id": "a", "track_id": 1, "class_name": "car"},
    {"frame_id": "a"},
    {"frame_id": "a", "label": 1, "class_name": "car"},
    {"frame_id": "a", "class_name": "  "},
    {"frame_id": "a", "label": -1},
])
def test_malformed_labels_raise_value_errors(kw):
    index = new_index()
    with pytest.raises(ValueError):
        index.apply_label(**kw)
    assert index.label_stats()["labels_pending"] == 0


def test_class_names_tracks_and_pending_labels_survive_a_snapshot(tmp_path):
    index = new_index(label_ttl_records=50)
    crops(index, 0, 3, track=1)
    index.apply_label(track_id=1, stream_id="cam0", class_name="car")
    index.apply_label(track_id=2, stream_id="cam0", class_name="bus")  # pending
    index.apply_label(frame_id="cam9:00000001", class_name="person")  # pending
    index.snapshot(tmp_path)
    loaded = LiveIndex.load(tmp_path, background=False)
    assert loaded.class_names() == {"car": 0, "bus": 1, "person": 2}
    st, st0 = loaded.label_stats(), index.label_stats()
    for key in ("labelled", "labels_pending", "labels_matched", "labels_expired", "classes"):
        assert st[key] == st0[key], key
    for idx in (index, loaded):  # later rows of both tracks are labelled the same way
        crops(idx, 3, 2, track=1)
        crops(idx, 5, 2, track=2)
        idx.add(["cam9:00000001"], data(1, seed=9))
    for fid in index.frame_ids():
        assert loaded.label(fid) == index.label(fid), fid
    assert loaded.label("cam0:00000006#t2") == 1 and loaded.label("cam9:00000001") == 2
    assert loaded.store.book.ttl_records == 50


def test_a_snapshot_from_before_the_label_book_loads_its_orphans(tmp_path):
    index = new_index()
    index.add(["a"], data(1))
    index.set_labels(["orphan"], [2])
    snap = index.snapshot(tmp_path)
    meta = json.loads((snap / "meta.json").read_text())
    del meta["label_book"]
    (snap / "meta.json").write_text(json.dumps(meta))
    loaded = LiveIndex.load(tmp_path, background=False)
    assert loaded.label("orphan") == 2 and loaded.label_stats()["labels_pending"] == 1
    assert loaded.class_names() == {}
    loaded.add(["orphan"], data(1, seed=1))
    assert loaded.label("orphan") == 2


def test_the_book_round_trips_through_json():
    book = LabelBook(ttl_records=7, ttl_seconds=3.5)
    book.class_id("car")
    book.hold_frame("f", 0, n=3, now=10.0)
    book.label_track(("cam0", 1), 0, n=3, now=11.0)
    book.add_row(("cam0", 2), 5)
    again = LabelBook.from_json(json.loads(json.dumps(book.to_json())))
    assert again.to_json() == book.to_json()
