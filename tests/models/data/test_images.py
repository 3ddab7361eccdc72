from __future__ import annotations

import numpy as np
import pytest

from vistream.models.data import images as D


def test_digits32_fixed_split_and_shapes():
    a, b = D.digits32(), D.digits32()
    assert a.train.x.shape[1:] == (3, 32, 32) and a.train.x.dtype == np.float32
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert np.array_equal(a.test.y, b.test.y) and np.array_equal(a.val.x, b.val.x)
    assert a.train.x.min() >= 0 and a.train.x.max() <= 1
    assert set(np.unique(a.test.y)) == set(range(10))


def test_split_indices_are_disjoint_and_stratified():
    y = np.repeat(np.arange(5), 20)
    idx = D.split_indices(y)
    allidx = np.concatenate(list(idx.values()))
    assert len(np.unique(allidx)) == len(y)
    assert np.bincount(y[idx["train"]]).tolist() == [12] * 5


def test_composite_is_deterministic(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "_digits_raw", lambda: (np.random.default_rng(0).random((40, 8, 8),
                                                                                  ).astype(np.float32),
                                                   np.repeat(np.arange(10), 4)))
    s1 = D.generate_composite(copies=1)
    s2 = D.generate_composite(copies=1)
    assert s1["train"].x.shape[1:] == (3, 32, 32)
    assert np.array_equal(s1["test"].x, s2["test"].x)
    monkeypatch.setenv("VISTREAM_CACHE", str(tmp_path))
    b = D.digits_composite(copies=1)
    assert list(tmp_path.glob("*.npz")) and np.array_equal(D.digits_composite(copies=1).val.x, b.val.x)
    assert len(b.mean) == 3


def test_image_folder_and_cifar(tmp_path):
    import pickle

    import cv2

    for c in ("cat", "dog"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(5):
            cv2.imwrite(str(tmp_path / "f" / c / f"{i}.png"),
                        np.full((20, 30, 3), 40 * i, np.uint8))
    b = D.load_dataset(f"imagefolder:{tmp_path / 'f'}")
    assert b.classes == ["cat", "dog"] and len(b.train) + len(b.val) + len(b.test) == 10
    root = tmp_path / "c"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "test_batch"):
        d = {b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8),
             b"labels": list(np.arange(20) % 10)}
        (root / name).write_bytes(pickle.dumps(d))
    c = D.cifar10_batches(root, val_size=10)
    assert len(c.test) == 20 and len(c.val) == 10 and c.train.x.shape[1:] == (3, 32, 32)


def test_cifar_loader_refuses_code(tmp_path):
    import pickle

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"x": print}))
    (tmp_path / "test_batch").write_bytes(b"")
    with pytest.raises(pickle.UnpicklingError):
        D.cifar10_batches(tmp_path)


def test_batches_normalise_and_augment():
    s = D.Split(np.ones((10, 3, 32, 32), np.float32), np.arange(10))
    xs = list(D.batches(s, 4, (0.5,) * 3, (0.5,) * 3, shuffle=True, augment=True))
    assert [len(y) for _, y in xs] == [4, 4, 2]
    assert float(xs[0][0].max()) == pytest.approx(1.0)
