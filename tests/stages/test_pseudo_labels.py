"""Pseudo-labels (issue 23): the features stage tags vectors with its classifier head's class at
or above ``pseudo_label_threshold`` (off by default); the index stage turns a tag into a label
record with source ``pseudo`` for that row, counted apart from people's labels."""

from __future__ import annotations

import numpy as np
import pytest

from vistream.models.hashing.labels import LabelBook
from vistream.pipeline.wire import result_from_bytes, result_to_bytes
from vistream.stages.base import create_stage
from vistream.stages.features import head_predict
from vistream.stages.records import Features, InvalidRecord, Label, Tracks
from tests.conftest import make_frame


def _features(**params):
    st = create_stage("features", {"artifact": "zoo:binary-resnet20-composite", "batch_size": 4,
                                   **params})
    st.setup()
    return st


def test_pseudo_labels_are_off_by_default():
    st = _features()
    out = st.process([make_frame(i) for i in range(3)])
    assert st.head is None
    assert all(o.pseudo_class is None and o.pseudo_score is None for o in out)


def test_the_head_tags_vectors_at_or_above_the_threshold_only():
    frames = [make_frame(i) for i in range(6)]
    st = _features(pseudo_label_threshold=1e-6)  # every vector clears it
    out = st.process(frames)
    # the head over the stage's own vectors is the network's own classifier
    import torch

    from vistream.models.artifacts import preprocess

    with torch.no_grad():
        logits = st.model(preprocess([f.image for f in frames], st.spec, st.norm)).numpy()
    assert [o.pseudo_class for o in out] == [str(int(c)) for c in logits.argmax(1)]
    e = np.exp(logits - logits.max(1, keepdims=True))
    best = (e / e.sum(1, keepdims=True)).max(1)
    assert np.allclose([o.pseudo_score for o in out], best, atol=1e-4)
    # a threshold between the scores keeps exactly the confident ones
    thr = float(np.median(best))
    st2 = _features(pseudo_label_threshold=thr)
    out2 = st2.process(frames)
    assert [o.pseudo_class is not None for o in out2] == [b >= thr for b in best]
    # the tag travels on the wire
    back = result_from_bytes(result_to_bytes(out[0]))
    assert back.pseudo_class == out[0].pseudo_class and back.pseudo_score == out[0].pseudo_score


def test_crops_are_tagged_one_by_one_and_class_names_are_checked():
    st = _features(crops=True, pseudo_label_threshold=1e-6,
                   class_names=[f"c{i}" for i in range(10)])
    f = make_frame(0, h=80, w=120)
    tr = Tracks(f.frame_id, f.stream_id, boxes=np.array([[5, 5, 20, 20], [40, 30, 30, 25]],
                                                          np.float32),
                track_ids=np.array([3, 7]), scores=np.ones(2, np.float32))
    out = st.process([f, tr])
    assert [o.label for o in out] == [3, 7]
    assert all(o.pseudo_class.startswith("c") for o in out)
    with pytest.raises(RuntimeError, match="class_names has 3 names"):
        _features(pseudo_label_threshold=0.5, class_names=["a", "b", "c"])
    with pytest.raises(ValueError):
        create_stage("features", {"pseudo_label_threshold": 0.0})


def test_head_predict_is_a_softmax_argmax():
    W = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], np.float32)
    c, p = head_predict((W, np.zeros(3, np.float32)), np.array([[3.0, 0.0], [0.0, 0.0]]))
    assert c.tolist() == [0, 0]
    assert p[0] == pytest.approx(np.exp(3) / (np.exp(3) + 1 + np.exp(-3)), rel=1e-5)
    assert p[1] == pytest.approx(1 / 3, rel=1e-5)


def _index():
    st = create_stage("hashing", {"model": "sdoh", "n_bits": 16, "train_chunk": 4,
                                  "background": False, "feature_label": "track",
                                  "model_params": {"max_iter": 5}})
    st.setup()
    return st


def _crop(frame: int, track: int, pseudo: str | None = None, seed: int = 0) -> Features:
    v = np.random.default_rng(seed + 10 * frame + track).standard_normal(8).astype(np.float32)
    return Features(f"cam:{frame:08d}", "cam", vector=v, model_id="m", label=track,
                    pseudo_class=pseudo, pseudo_score=None if pseudo is None else 0.9)


def test_the_index_applies_pseudo_labels_per_row_counted_apart():
    st = _index()
    st.process([_crop(0, 1, "7"), _crop(0, 2), _crop(1, 1, "7"), _crop(1, 2, "3")])
    idx = st.index
    assert idx.label("cam:00000000#t1") == idx.label("cam:00000001#t1") == idx.class_names()["7"]
    assert idx.label("cam:00000000#t2") is None  # untagged rows stay unlabelled
    s = idx.label_stats()
    assert s["labels_pseudo"] == 3 and s["labelled_pseudo"] == 3 and s["labelled"] == 3
    # a person's label of track 2 labels its rows not labelled yet; the pseudo-labelled row
    # keeps its label (the first label of a row wins, SDOH cannot unlearn)
    st.process([Label("", "cam", track_id=2, class_name="5")])
    s = idx.label_stats()
    assert idx.label("cam:00000000#t2") == idx.class_names()["5"]
    assert idx.label("cam:00000001#t2") == idx.class_names()["3"]
    assert s["labelled"] == 4 and s["labelled_pseudo"] == 3 and s["labels_pseudo"] == 3
    m = st.metrics()
    assert m["labels_pseudo"] == 3 and m["labelled_pseudo"] == 3
    assert s["model_version"] >= 1  # 4 labelled rows: one SDOH chunk trained


def test_label_source_is_checked_and_survives_snapshots():
    Label("f", "s", class_name="a", source="pseudo").check()
    with pytest.raises(InvalidRecord, match="source must be one of user, pseudo"):
        Label("f", "s", class_name="a", source="robot").check()
    assert result_from_bytes(result_to_bytes(Label("f", "s", label=1, source="pseudo"))
                             ).source == "pseudo"
    book = LabelBook()
    book.count_source("pseudo", 2)
    book.count_source("user", 5)
    back = LabelBook.from_json(book.to_json())
    assert (back.pseudo_records, back.pseudo_rows) == (1, 2)
    assert LabelBook.from_json({}).pseudo_rows == 0  # snapshots from before pseudo-labels


def test_scores_vectors_and_track_pooling():
    frames = [make_frame(i, h=80, w=120) for i in range(3)]
    plain = _features(crops=True)
    scores = _features(crops=True, vector="scores")
    pooled = _features(crops=True, track_pool=2)

    def run(st):
        out = []
        for f in frames:  # track 4 in every frame, track 9 in the first only
            ids = [4, 9] if f.seq == 0 else [4]
            boxes = np.array([[10 + 5 * f.seq, 10, 24, 20], [60, 30, 20, 30]][:len(ids)],
                             np.float32)
            out += st.process([f, Tracks(f.frame_id, f.stream_id, boxes=boxes,
                                         track_ids=np.array(ids), scores=np.ones(len(ids)))])
        return out

    a, b, c = run(plain), run(scores), run(pooled)
    assert [o.label for o in a] == [4, 9, 4, 4]
    # scores: the head's logits of the crop's features, in a model id of their own
    W, bias = scores.head
    assert np.allclose(b[0].vector, a[0].vector @ W.T + bias, atol=1e-4)
    assert b[0].vector.shape == (10,) and b[0].model_id == a[0].model_id + "/scores"
    # pooling: the mean of this crop's vector and the one before of the same track
    assert np.allclose(c[0].vector, a[0].vector) and np.allclose(c[1].vector, a[1].vector)
    assert np.allclose(c[2].vector, (a[0].vector + a[2].vector) / 2, atol=1e-5)
    assert np.allclose(c[3].vector, (a[2].vector + a[3].vector) / 2, atol=1e-5)
