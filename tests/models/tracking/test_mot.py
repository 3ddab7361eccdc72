"""``vistream eval mot``: the seeded multi-target data, the motmetrics scoring (a perfect
tracker scores 1.0, swapped ids score lower), the MOTChallenge loader and the command."""

import json
import math

import cv2
import numpy as np
import pytest

from vistream.models.data.mot import MotSpec, line_kernel, render, suite_specs
from vistream.models.tracking.mot import (
    IOU_SEEDED,
    load_mot_folder,
    run_sequence,
    summarize,
)


@pytest.fixture(scope="module")
def seq():
    return render(MotSpec(name="tiny", seed=3, family="shake", n_frames=24, width=200, height=150,
                          n_targets=4, target_size=(4.0, 20.0)))


class Oracle:
    """Reports the ground truth; ``swap_at`` swaps the ids of the first two targets from then
    on."""

    def __init__(self, seq, swap_at=None):
        self.seq, self.t, self.swap_at = seq, 0, swap_at

    def step(self, frame):
        ids, boxes = self.seq.ground_truth(self.t)
        ids = ids.copy()
        if self.swap_at is not None and self.t >= self.swap_at:
            ids = np.where(ids == 1, -2, np.where(ids == 2, 1, ids))
            ids[ids == -2] = 2
        self.t += 1
        return boxes.astype(np.float32), ids


def test_render_is_seeded_and_ground_truth_in_frame(seq):
    again = render(seq.spec)
    assert all(np.array_equal(a, b) for a, b in zip(seq.frames, again.frames))
    assert seq.frames[0].shape == (150, 200, 3) and seq.frames[0].dtype == np.uint8
    b = seq.boxes[seq.present]
    assert (b[:, 0] >= 0).all() and (b[:, 0] + b[:, 2] <= 200 + 1e-9).all()
    assert (b[:, 1] >= 0).all() and (b[:, 1] + b[:, 3] <= 150 + 1e-9).all()
    assert list(seq.ids) == [1, 2, 3, 4] and seq.present.any()
    other = render(MotSpec(name="tiny", seed=4, family="shake", n_frames=24, width=200,
                           height=150, n_targets=4))
    assert not np.array_equal(other.frames[5], seq.frames[5])


def test_splits_do_not_share_sequences():
    val = {s.seed for s in suite_specs("val", 3, 30, 2019)}
    test = suite_specs("test", 3, 30, 2019)
    assert not val & {s.seed for s in test}
    assert [s.family for s in test] == ["shake"] * 3 + ["smooth"] * 3
    assert all(3 <= s.n_targets <= 8 for s in test)


def test_line_kernel():
    assert line_kernel(0.3, 0.4) is None
    k = line_kernel(6.0, 0.0)
    assert abs(k.sum() - 1) < 1e-6 and k.shape[0] == k.shape[1]
    assert np.allclose(k.sum(axis=1)[k.shape[0] // 2], 1.0)  # a horizontal streak: one row
    assert line_kernel(100.0, 0.0).shape[0] <= 29  # capped


def test_a_perfect_tracker_scores_one_and_swapped_ids_score_lower(seq):
    perfect = run_sequence(Oracle(seq), seq, "perfect", IOU_SEEDED)
    swapped = run_sequence(Oracle(seq, swap_at=12), seq, "swapped", IOU_SEEDED)
    s = summarize([perfect, swapped])
    assert s["perfect"]["all"]["idf1"] == 1.0 and s["perfect"]["all"]["mota"] == 1.0
    assert s["perfect"]["all"]["num_switches"] == 0
    assert s["perfect"]["all"]["frames_to_track_median"] == 0.0
    both = seq.present[:12, :2].any(axis=0).all() and seq.present[12:, :2].any(axis=0).all()
    assert both  # the fixture has targets 1 and 2 on both sides of the swap
    assert s["swapped"]["all"]["idf1"] < 1.0 and s["swapped"]["all"]["num_switches"] >= 2
    assert s["swapped"]["all"]["mota"] < 1.0
    assert set(s["perfect"]) >= {"all", "shake", "per_sequence"}


def _write_mot_folder(root, n=4):
    seq = root / "TINY-01"
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    lines = []
    for f in range(1, n + 1):
        img = np.full((120, 160, 3), 90, np.uint8)
        for tid, (x, y) in ((1, (10 + 5 * f, 20)), (2, (100, 30 + 4 * f))):
            img[y:y + 12, x:x + 12] = (40, 200, 250)
            # 1-based MATLAB coordinates, confidence 1, class 1, visibility 1
            lines.append(f"{f},{tid},{x + 1},{y + 1},12,12,1,1,1")
        lines.append(f"{f},9,1,1,5,5,0,1,1")  # confidence 0: ignored
        cv2.imwrite(str(seq / "img1" / f"{f:06d}.jpg"), img)
    (seq / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
    return seq


def test_motchallenge_loader_reads_a_tiny_folder(tmp_path):
    folder = _write_mot_folder(tmp_path)
    for path in (folder, tmp_path):  # one sequence, or a folder of sequences
        (s,) = load_mot_folder(path)
        assert s.name == "TINY-01" and s.n_frames == 4 and s.frame_ids == [1, 2, 3, 4]
        ids, boxes = s.ground_truth(1)  # frame 2
        assert list(ids) == [1, 2]
        assert np.allclose(boxes, [[20, 20, 12, 12], [100, 38, 12, 12]])
        assert s.frames[0].shape == (120, 160, 3)
    run = run_sequence(Oracle(s), s, "perfect", 0.5)
    assert summarize([run])["perfect"]["all"]["idf1"] == 1.0
    with pytest.raises(FileNotFoundError):
        load_mot_folder(tmp_path / "TINY-01" / "gt")


def test_cli_eval_mot_quick(tmp_path):
    from typer.testing import CliRunner

    from vistream.cli.main import app

    mot = _write_mot_folder(tmp_path / "mot", n=6).parent
    res = CliRunner().invoke(app, ["eval", "mot", "--quick", "--no-progress", "--out",
                                   str(tmp_path / "out"), "--seed", "5"])
    assert res.exit_code == 0, res.output
    last = json.loads(res.stdout.strip().splitlines()[-1])  # logs go to stderr
    assert {"idf1", "mota", "baseline_idf1", "fps"} <= set(last)
    assert 0 <= last["idf1"] <= 1 and last["fps"] > 0 and not math.isnan(last["baseline_idf1"])
    assert "**shake**" in res.output and "mog2+sort" in res.output
    for name in ("results.json", "results.md", "idf1_per_sequence.png", "frame.png"):
        assert (tmp_path / "out" / name).is_file()
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(doc["tuning"]["mog2+sort"]["grid"]) == len(doc["tuning"]["multi (ours)"]["grid"])
    res = CliRunner().invoke(app, ["eval", "mot", "--quick", "--no-progress", "--mot", str(mot),
                                   "--out", str(tmp_path / "out2")])
    assert res.exit_code == 0, res.output
    assert "TINY-01" in (tmp_path / "out2" / "results.json").read_text()
    res = CliRunner().invoke(app, ["eval", "mot", "--mot", str(tmp_path / "nope")])
    assert res.exit_code != 0
