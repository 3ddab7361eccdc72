import numpy as np

from vistream.stages.base import create_stage
from vistream.stages.records import Caption, Frame, FrameSummary, Tracks, decode_image
from vistream.stages.thumbstore import ThumbnailStore, tracks_meta


def _jpeg(n: int) -> bytes:
    return b"\xff\xd8\xff" + bytes(n - 5) + b"\xff\xd9"


def test_put_get_and_replace(tmp_path):
    store = ThumbnailStore(tmp_path)
    store.put("cam0:1", "cam0", _jpeg(100), timestamp_ms=5, width=640, height=480,
              thumb_width=160, thumb_height=120)
    assert store.jpeg("cam0:1") == _jpeg(100)
    row = store.get("cam0:1")
    assert (row.stream_id, row.timestamp_ms, row.width, row.thumb_height) == ("cam0", 5, 640, 120)
    store.put("cam0:1", "cam0", _jpeg(50))  # a redelivery replaces, and the totals follow
    assert store.totals()["frames"] == 1 and store.totals()["bytes"] == 50
    assert store.jpeg("nope") is None and store.get("nope") is None and "nope" not in store


def test_bounded_by_bytes_oldest_first(tmp_path):
    store = ThumbnailStore(tmp_path, max_bytes=1000)
    for i in range(30):
        store.put(f"s:{i}", "s", _jpeg(100))
    t = store.totals()
    assert t["bytes"] <= 1000 and t["frames"] == 10 and store.evicted == 20
    assert "s:19" not in store and "s:20" in store and "s:29" in store


def test_bounded_by_count_and_shared_between_openers(tmp_path):
    writer = ThumbnailStore(tmp_path, max_frames=5)
    writer.put_many([{"frame_id": f"a:{i}", "stream_id": "a", "jpeg": _jpeg(20)}
                     for i in range(12)])
    reader = ThumbnailStore(tmp_path)  # another process would open it the same way
    assert len(reader) == 5 and reader.jpeg("a:11") == _jpeg(20) and reader.jpeg("a:6") is None


def test_latest_per_stream_joins_late_tracks_and_captions(tmp_path):
    store = ThumbnailStore(tmp_path)
    store.set_tracks("a:2", "a", tracks_meta([[1, 2, 3, 4]], [7], [0.5]))  # before its frame
    for i in range(4):
        store.put(f"a:{i}", "a", _jpeg(30), timestamp_ms=i)
    store.put("b:0", "b", _jpeg(30))
    store.set_caption("a:1", "a", "a red car")
    latest = store.latest("a")
    assert latest.frame_id == "a:3"
    assert latest.tracks == [{"track_id": 7, "box": [1.0, 2.0, 3.0, 4.0], "score": 0.5}]
    assert latest.extra == {"tracks_frame_id": "a:2", "caption_frame_id": "a:1"}
    assert store.streams() == ["a", "b"]
    assert store.latest("b").tracks is None and store.latest("zzz") is None


def test_thumbnail_stage_writes_the_store(tmp_path):
    stage = create_stage("thumbnail", {"width": 32, "store_dir": str(tmp_path / "t")})
    stage.setup()
    img = np.full((48, 64, 3), 200, np.uint8)
    frames = [Frame.from_image(img, "cam", i, timestamp_ms=100 + i) for i in range(3)]
    tracks = Tracks("cam:00000002", "cam", boxes=np.array([[4, 4, 10, 10]], np.float32),
                    track_ids=np.array([3]), scores=np.array([0.9], np.float32))
    out = stage.process([*frames, tracks, Caption("cam:00000002", "cam", text="grey")])
    assert [type(m) for m in out] == [FrameSummary] * 3
    latest = stage.store.latest("cam")
    assert latest.frame_id == "cam:00000002" and latest.caption == "grey"
    assert (latest.width, latest.height, latest.thumb_width, latest.thumb_height) == (64, 48, 32, 24)
    assert latest.tracks[0]["track_id"] == 3
    assert decode_image(stage.store.jpeg("cam:00000000")).shape == (24, 32, 3)
    stage.close()


def test_thumbnail_stage_without_store_ignores_tracks():
    stage = create_stage("thumbnail", {})
    stage.setup()
    assert stage.process([Tracks("x:1", "x")]) == []
