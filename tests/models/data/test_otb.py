"""OTB-layout folders read as tracking sequences."""

import cv2
import numpy as np
import pytest

from vistream.models.data import load_otb


def write_otb(folder, n=5, sep=",", gt_names=("groundtruth_rect.txt",)):
    (folder / "img").mkdir(parents=True)
    for i in range(n):
        img = np.full((48, 64, 3), 40 + 10 * i, np.uint8)
        cv2.imwrite(str(folder / "img" / f"{i + 1:04d}.jpg"), img)
    for k, name in enumerate(gt_names):
        rows = [sep.join(str(v) for v in (i + k, 2 * i, 10, 12)) for i in range(n)]
        (folder / name).write_text("\n".join(rows) + "\n")


def test_otb_loader_reads_folders_and_sequences(tmp_path):
    write_otb(tmp_path / "Walk", sep=",")
    write_otb(tmp_path / "Car", n=4, sep="\t")
    write_otb(tmp_path / "Duo", n=3, sep=" ",
              gt_names=("groundtruth_rect.1.txt", "groundtruth_rect.2.txt"))
    (tmp_path / "notes").mkdir()
    seqs = load_otb(tmp_path)
    assert [s.name for s in seqs] == ["Car", "Duo", "Walk"]
    car, duo, walk = seqs
    assert walk.n_frames == 5 and walk.boxes.shape == (5, 1, 4)
    assert walk.boxes[3, 0].tolist() == [3, 6, 10, 12]
    assert walk.frames[2].shape == (48, 64, 3)
    assert car.n_frames == 4 and car.visible.all()
    assert duo.n_targets == 2 and duo.boxes[1, 1].tolist() == [2, 2, 10, 12]
    assert all("multi" in a for a in duo.attributes)
    one = load_otb(tmp_path / "Walk")
    assert len(one) == 1 and one[0].name == "Walk"
    with pytest.raises(ValueError):
        load_otb(tmp_path / "notes")


def test_otb_loader_marks_missing_boxes_invisible(tmp_path):
    write_otb(tmp_path / "S", n=3)
    (tmp_path / "S" / "groundtruth_rect.txt").write_text("1,2,10,10\n0,0,0,0\nNaN,NaN,NaN,NaN\n")
    (seq,) = load_otb(tmp_path)
    assert seq.visible[:, 0].tolist() == [True, False, False]
