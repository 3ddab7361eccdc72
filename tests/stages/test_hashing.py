"""The index stage through the real StageRunner: joins, idempotence, DLQ, snapshot + replay."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from vistream.pipeline.bus import TopicPartition, TopicSpec, make_bus
from vistream.pipeline.config import load_config
from vistream.pipeline.runner import StageRunner, positions_from_carry
from vistream.pipeline.wire import encode_message
from vistream.stages.base import create_stage, get_stage_class
from vistream.stages.hashing import HashingStage
from vistream.stages.records import Caption, Features, FrameSummary, Label, Tracks

REPO = Path(__file__).resolve().parents[2]


def feature_records(n: int, d: int = 8, labelled_every: int = 2, label_records: bool = True,
                    seed: int = 0, start: int = 0):
    """Feature records (every ``labelled_every``-th carries its label) interleaved with
    separate label records for some of the others; returns (records, labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, d)).astype(np.float32) * 2
    y = rng.integers(0, 3, n + start)[start:]
    X = centres[y] + rng.standard_normal((n, d)).astype(np.float32)
    recs = []
    for j in range(n):
        i = start + j
        fid = f"cam{i % 2}:{i:08d}"
        lab = int(y[j]) if i % labelled_every == 0 else None
        recs.append(Features(fid, f"cam{i % 2}", vector=X[j], model_id="m1", label=lab,
                             timestamp_ms=1000 + i if i % 2 else None))
        if label_records and lab is None and i % 3 == 0:
            recs.append(Label(fid, f"cam{i % 2}", label=int(y[j])))
    return recs, y


def meta_records(n: int):
    recs = []
    for i in range(0, n, 2):
        fid = f"cam{i % 2}:{i:08d}"
        recs.append(Caption(fid, f"cam{i % 2}", text=f"frame {i}"))
        recs.append(Tracks(fid, f"cam{i % 2}", boxes=np.array([[i, 1, 2, 3]], np.float32),
                           track_ids=np.array([7], np.int64), scores=np.array([0.5], np.float32)))
        recs.append(FrameSummary(fid, f"cam{i % 2}", width=64, height=36, timestamp_ms=1000 + i))
    return recs


def produce(bus, topic: str, msgs) -> None:
    with bus.producer() as p:
        for m in msgs:
            r = encode_message(m)
            p.send(topic, r.value, r.key, r.headers)
        p.flush()


def runner_for(bus, stage, group: str = "idx", batch_size: int = 16) -> StageRunner:
    return StageRunner(stage, bus, inputs=["feats", "meta"], group_id=group, batch_size=batch_size,
                       poll_timeout=0.05)


def run_idle(runner: StageRunner) -> None:
    runner.run(threading.Event(), idle_timeout=0.3)


def stage(**params) -> HashingStage:
    base = {"model": "sdoh", "n_bits": 16, "train_chunk": 20, "background": False,
            "model_params": {"max_iter": 10}}
    return create_stage("hashing", {**base, **params})  # type: ignore[return-value]


def new_bus():
    bus = make_bus("memory")
    bus.create_topics([TopicSpec("feats", 1), TopicSpec("meta", 1), TopicSpec("feats.dlq", 1),
                       TopicSpec("meta.dlq", 1)])
    return bus


def state(index):
    return {
        "ids": index.frame_ids(), "codes": index.codes(), "W": index.model.W.copy(),
        "version": (index.model_name, index.model_version), "pending": index.pending_labels,
        "meta": {f: index.meta(f) for f in index.frame_ids()},
        "labels": [index.label(f) for f in index.frame_ids()],
    }


def assert_same(a, b) -> None:
    assert a["ids"] == b["ids"]
    np.testing.assert_array_equal(a["codes"], b["codes"])
    np.testing.assert_array_equal(a["W"], b["W"])
    for k in ("version", "pending", "meta", "labels"):
        assert a[k] == b[k], k


def test_registered_and_config_validates():
    assert get_stage_class("hashing") is HashingStage
    cfg = load_config(REPO / "configs" / "index.yaml")
    s = [s for s in cfg.stages if s.type == "hashing"]
    assert s and set(s[0].inputs) >= {"features", "labels"}


def test_stage_indexes_joins_metadata_and_learns():
    bus = new_bus()
    feats, y = feature_records(60)
    produce(bus, "feats", feats)
    produce(bus, "meta", meta_records(60))
    st = stage()
    runner = runner_for(bus, st)
    run_idle(runner)
    index = st.index
    assert len(index) == 60
    assert index.model_name == "sdoh" and index.model_version >= 1 and not index.warm_start
    hit = index.search_frame("cam0:00000004", 60).hits
    assert hit[0].frame_id == "cam0:00000004" and hit[0].distance == 0
    h = hit[0]
    assert (h.stream_id, h.timestamp_ms, h.caption) == ("cam0", 1004, "frame 4")
    assert h.tracks == ({"track_id": 7, "box": [4.0, 1.0, 2.0, 3.0], "score": 0.5},)
    assert h.label == y[4]
    # odd frames have no summary record: their capture time came with the feature record
    odd = index.search_frame("cam1:00000005", 1).hits[0]
    assert (odd.frame_id, odd.timestamp_ms) == ("cam1:00000005", 1005)
    assert index.label("cam1:00000003") == y[3]  # from a separate label record
    assert index.feature_model_id == "m1"
    assert runner.positions == {TopicPartition("feats", 0): len(feats),
                                TopicPartition("meta", 0): 90}


def test_redelivery_never_duplicates_results():
    bus = new_bus()
    feats, _ = feature_records(40, label_records=False)
    produce(bus, "feats", feats)
    produce(bus, "feats", feats[:25])  # a producer retry re-sends records
    st = stage(train_chunk=1000)
    runner = runner_for(bus, st)
    runner.open()
    while runner.step():
        pass
    assert runner.start_positions({TopicPartition("feats", 0)}) == {TopicPartition("feats", 0): 65}
    # Everything is delivered once more (as after a crash before a commit): still one entry each.
    # A new runner without a snapshot to restore starts the stateful stage at offset 0.
    run_idle(runner_for(bus, st, group="other-group"))
    index = st.index
    assert len(index) == 40
    assert index.stats.duplicates == 25 + 65
    for fid in index.frame_ids()[:5]:
        hits = index.search_frame(fid, 100).hits
        assert len(hits) == 40 and len({h.frame_id for h in hits}) == 40


def test_bad_records_are_dead_lettered_and_neighbours_pass():
    bus = new_bus()
    good, _ = feature_records(10, label_records=False)
    bad = [
        Features("bad:nan", "cam", vector=np.full(8, np.nan, np.float32)),
        Features("bad:dim", "cam", vector=np.ones(5, np.float32)),
        Features("bad:model", "cam", vector=np.ones(8, np.float32), model_id="other"),
        Label("bad:label", "cam", label=-3),
    ]
    produce(bus, "feats", good[:5] + bad + good[5:])
    st = stage()
    runner = runner_for(bus, st)
    run_idle(runner)
    assert len(st.index) == 10
    assert runner.stats.dead_lettered == 4
    with bus.consumer(["feats.dlq"], "dlq-reader") as c:
        recs = c.poll(100, 1.0)
    reasons = sorted(dict(r.headers)["dlq_reason"].decode() for r in recs)
    assert len(reasons) == 4
    assert any("NaN" in r for r in reasons) and any("dims" in r for r in reasons)
    assert any("model" in r for r in reasons) and any(">= 0" in r for r in reasons)


def test_unknown_partitions_start_at_zero():
    st = stage()
    runner = runner_for(new_bus(), st)
    runner.open()
    tps = {TopicPartition("feats", 0), TopicPartition("meta", 2)}
    assert st.stateful and st.restore() is None
    assert runner.start_positions(tps) == {tp: 0 for tp in tps}
    runner.close()


@pytest.mark.parametrize("crash_after_steps", [3, 9])
def test_restart_from_snapshot_and_replay_equals_a_twin(tmp_path, crash_after_steps):
    feats, _ = feature_records(150)
    metas = meta_records(150)

    # The twin never restarts.
    bus = new_bus()
    produce(bus, "feats", feats)
    produce(bus, "meta", metas)
    twin = stage()
    run_idle(runner_for(bus, twin, batch_size=7))

    # The other one snapshots every ~20 records, crashes mid-way (after committing batches its
    # last snapshot does not cover), then restarts from the snapshot and replays.
    bus = new_bus()
    produce(bus, "feats", feats)
    produce(bus, "meta", metas)
    params = {"snapshot_dir": str(tmp_path), "snapshot_every_records": 20}
    first = stage(**params)
    runner = runner_for(bus, first, batch_size=5)
    runner.open()
    for _ in range(crash_after_steps):
        runner.step()
    committed = bus.committed("idx")
    snap_offsets = dict(runner.restored_positions)  # empty: it started fresh
    assert not snap_offsets and first.index.loaded_carry is None
    first.snapshot_due = lambda closing: False  # a crash: no final snapshot
    runner.close()
    assert sum(committed.values()) > 0

    second = stage(**params)
    runner2 = runner_for(bus, second, batch_size=11)
    run_idle(runner2)
    restored = runner2.restored_positions
    assert positions_from_carry(second.index.loaded_carry) == restored
    # It really resumed from the snapshot, behind the committed offsets.
    assert sum(restored.values()) < sum(committed.values()) or crash_after_steps < 4
    assert_same(state(second.index), state(twin.index))
    for fid in twin.index.frame_ids()[::17]:
        assert second.index.search_frame(fid, 10) == twin.index.search_frame(fid, 10)


def test_close_snapshots_and_a_restart_resumes_without_rereading(tmp_path):
    bus = new_bus()
    feats, _ = feature_records(50)
    produce(bus, "feats", feats)
    st = stage(snapshot_dir=str(tmp_path))
    run_idle(runner_for(bus, st))  # closes the stage: final snapshot
    again = stage(snapshot_dir=str(tmp_path))
    runner = runner_for(bus, again)
    runner.open()  # setup, then restore
    assert len(again.index) == 50
    assert runner.start_positions({TopicPartition("feats", 0)}) == {TopicPartition("feats", 0):
                                                                    len(feats)}
    assert_same(state(again.index), state(st.index))


def test_restart_replays_from_the_snapshot_on_either_bus(backend, tmp_path):
    """The same crash-and-restart on the memory bus and on a real broker (``kafka`` marker):
    the positions restored with the snapshot reach the consumer through ``on_assign``."""
    import time
    import uuid

    from tests.conftest import kafka_bootstrap

    uid = uuid.uuid4().hex[:8]
    tf, tm = f"feats-{uid}", f"meta-{uid}"
    bus = make_bus("memory") if backend == "memory" else make_bus("kafka", kafka_bootstrap())
    try:
        bus.create_topics([TopicSpec(tf, 1), TopicSpec(tm, 1), TopicSpec(tf + ".dlq", 1),
                           TopicSpec(tm + ".dlq", 1)])
        feats, _ = feature_records(120)
        produce(bus, tf, feats)
        produce(bus, tm, meta_records(120))

        def runner(st, group, batch):
            return StageRunner(st, bus, inputs=[tf, tm], group_id=f"{group}-{uid}",
                               batch_size=batch, poll_timeout=0.2)

        twin = stage()
        runner(twin, "twin", 13).run(threading.Event(), idle_timeout=1.0)

        params = {"snapshot_dir": str(tmp_path), "snapshot_every_records": 25}
        first = stage(**params)
        r1 = runner(first, "idx", 10)
        r1.open()
        deadline = time.monotonic() + 60
        while sum(r1.positions.values()) < 70 and time.monotonic() < deadline:
            r1.step()
        first.snapshot_due = lambda closing: False  # crash: no final snapshot
        r1.close()
        applied_at_crash = sum(r1.positions.values())

        second = stage(**params)
        r2 = runner(second, "idx", 7)
        r2.open()
        restored = sum(r2.restored_positions.values())
        assert 0 < restored < applied_at_crash  # it must replay what the snapshot missed
        r2.run(threading.Event(), idle_timeout=1.0)
        assert_same(state(second.index), state(twin.index))
        assert second.index.stats.duplicates == 0  # replayed records were new to the snapshot
    finally:
        bus.close()


# --------------------------------------------------------------------------- labels (issue 23)


def crop_records(n_tracks: int, per_track: int, d: int = 8, seed: int = 0, stream: str = "cam0",
                 start: int = 0):
    """Features as the features stage emits them in crop mode: one per box, ``label`` = the
    track id, several crops sharing a frame id. Track t's features lie around centre t % 3."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, d)).astype(np.float32) * 3
    recs = []
    for f in range(start, start + per_track):
        fid = f"{stream}:{f:08d}"
        for t in range(n_tracks):
            vec = centres[t % 3] + rng.standard_normal(d).astype(np.float32) * 0.3
            recs.append(Features(fid, stream, vector=vec, model_id="m1", label=t))
    return recs


CLASSES = ["car", "bus", "bike"]


def test_crops_are_rows_of_their_track_and_learn_from_track_labels():
    bus = new_bus()
    labels = [Label("", "cam0", track_id=t, class_name=CLASSES[t % 3]) for t in range(3)]
    # the label of track 5 comes before its crops, the others after their first crops
    early = [Label("", "cam0", track_id=5, class_name="bike")]
    produce(bus, "meta", early)
    produce(bus, "feats", crop_records(6, 4) + labels + crop_records(6, 4, start=4, seed=1))
    st = stage(feature_label="track", train_chunk=20)
    run_idle(runner_for(bus, st))
    index = st.index
    assert len(index) == 48  # 8 frames x 6 crops: crops of one frame are distinct rows
    names = index.class_names()  # ids by first appearance; the two topics interleave
    assert sorted(names.values()) == [0, 1, 2]
    assert index.label("cam0:00000000#t1") == names["bus"] == index.label("cam0:00000007#t1")
    assert index.label("cam0:00000007#t5") == names["bike"] == index.label("cam0:00000000#t2")
    assert index.label("cam0:00000000#t3") is None  # track 3 has no label
    s = index.label_stats()
    assert sorted(s["classes"]) == ["bike", "bus", "car"] and s["labelled"] == 32
    assert s["labels_matched"] == 4 and s["labels_pending"] == 0
    assert s["model"] == "sdoh" and s["model_version"] >= 1 and s["swaps"] >= 1
    m = st.metrics()
    assert m["labelled"] == 32 and m["classes"] == 3 and m["last_swap_at"] > 0
    assert st.model_info()["model"] == "sdoh"


def test_without_feature_label_track_a_crop_label_is_a_class():
    st = stage()
    st.setup()
    st.process(crop_records(2, 1))
    assert len(st.index) == 1 and st.index.label("cam0:00000000") == 0  # the old reading


def test_labels_for_unknown_frames_and_tracks_wait_and_expire():
    st = stage(label_ttl_records=5)
    st.setup()
    st.process([Label("cam0:00000099", "cam0", class_name="car"),
                Label("", "", track_id=9, class_name="bus")])
    assert st.index.label_stats()["labels_pending"] == 2
    st.process(feature_records(5, label_records=False)[0])
    s = st.index.label_stats()
    assert (s["labels_pending"], s["labels_expired"], s["labels_matched"]) == (0, 2, 0)


def test_malformed_label_records_are_dead_lettered_with_their_reason():
    bus = new_bus()
    good, _ = feature_records(6, label_records=False)
    bad = [
        Label("", "cam0", class_name="car"),                          # no target
        Label("cam0:00000001", "cam0", track_id=3, class_name="car"),  # two targets
        Label("cam0:00000001", "cam0"),                               # no class
        Label("cam0:00000001", "cam0", label=1, class_name="car"),    # two classes
        Label("", "cam0", track_id=-2, class_name="car"),             # negative track
        Label("cam0:00000001", "cam0", class_name=""),                # empty class
    ]
    produce(bus, "meta", bad)
    produce(bus, "feats", good)
    with bus.producer() as p:  # a label record whose fields do not decode
        p.send("meta", b'{"kind":"label","schema":1,"fields":{"frame_id":"f","stream_id":"s",'
                       b'"colour":"red"},"arrays":[]}\n', b"s",
               [("content_type", b"application/x-vistream-label")])
        p.flush()
    st = stage()
    runner = runner_for(bus, st)
    run_idle(runner)
    assert len(st.index) == 6 and runner.stats.dead_lettered == 7
    with bus.consumer(["meta.dlq"], "dlq-reader") as c:
        reasons = [dict(r.headers)["dlq_reason"].decode() for r in c.poll(100, 1.0)]
    assert len(reasons) == 7
    assert sum("frame_id or a track_id" in r for r in reasons) == 2
    assert sum("class_name or an integer label" in r for r in reasons) == 2
    assert any("track_id must be" in r for r in reasons)
    assert any("class_name must be" in r for r in reasons)
    assert any("malformed label record" in r for r in reasons)
    assert st.index.label_stats()["labels_pending"] == 0


def test_labels_and_class_names_survive_a_restart(tmp_path):
    bus = new_bus()
    produce(bus, "feats", crop_records(3, 2))
    produce(bus, "meta", [Label("", "cam0", track_id=1, class_name="bus"),
                          Label("", "cam0", track_id=7, class_name="truck")])
    first = stage(feature_label="track", snapshot_dir=str(tmp_path))
    run_idle(runner_for(bus, first))  # closing writes a snapshot
    produce(bus, "feats", crop_records(8, 1, start=5))
    second = stage(feature_label="track", snapshot_dir=str(tmp_path))
    run_idle(runner_for(bus, second))
    index = second.index
    assert index.class_names() == {"bus": 0, "truck": 1}
    assert index.label("cam0:00000005#t1") == 0 and index.label("cam0:00000005#t7") == 1
    assert index.label_stats()["labels_matched"] == 2
