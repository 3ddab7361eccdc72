from __future__ import annotations

import numpy as np

from vistream.models.backbones import create_model
from vistream.models.data import DataBundle, Split
from vistream.models.train import BackboneTrainConfig, evaluate, load_checkpoint_model, train


def tiny_data(n=24):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.random((n, 3, 16, 16)).astype(np.float32) * 0.2
    x[:, 0] += y[:, None, None] * 0.4
    s = Split(x, y.astype(np.int64))
    return DataBundle("tiny", s, s, s, 3, ["a", "b", "c"])


def test_train_checkpoint_resume(tmp_path):
    data = tiny_data()
    m = create_model("resnet20", num_classes=3, widths=[4] * 9, base=4)
    r = train(m, data, BackboneTrainConfig(epochs=1, lr=0.05, batch_size=8), ckpt_dir=tmp_path,
              progress=False)
    assert r.epochs_run == 1 and (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()
    r2 = train(m, data, BackboneTrainConfig(epochs=2, lr=0.05, batch_size=8, schedule="step"),
               ckpt_dir=tmp_path, resume=True, progress=False)
    assert r2.epochs_run == 1 and [h["epoch"] for h in r2.history] == [0, 1]
    back = load_checkpoint_model(tmp_path / "last.pt")
    acc = evaluate(back, data.test, data.mean, data.std)
    assert acc == evaluate(m, data.test, data.mean, data.std)
    assert 0.0 <= acc <= 1.0


def test_train_backbone_init_transfers_weights_and_refuses_another_architecture(tmp_path):
    import json
    import subprocess
    import sys

    import torch

    src = create_model("resnet20", num_classes=10)
    with torch.no_grad():
        src.stem[0].weight.fill_(0.125)  # a mark that only a transfer can carry over
    train(src, tiny_data(20), BackboneTrainConfig(epochs=1, lr=0.0, schedule="constant", batch_size=10),
          ckpt_dir=tmp_path / "src", progress=False)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "vistream", "train", "backbone", "--epochs", "1",
                               "--lr", "0", "--schedule", "constant", "--no-progress", *args],
                              capture_output=True, text=True, timeout=300)

    src = str(tmp_path / "src" / "best.pt")
    res = cli("--arch", "resnet20", "--init", src, "--out", str(tmp_path / "dst"))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["init"].endswith("best.pt")
    # lr 0: the transferred weights are still there after an epoch
    assert torch.all(load_checkpoint_model(tmp_path / "dst" / "best.pt").stem[0].weight == 0.125)
    res = cli("--arch", "resnet56", "--init", src, "--out", str(tmp_path / "bad"))
    assert res.returncode == 2 and "--init" in res.stderr and "Traceback" not in res.stderr
