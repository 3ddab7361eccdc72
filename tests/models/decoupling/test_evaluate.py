import json

import numpy as np
import torch

from vistream.models.backbones import create_model
from vistream.models.data.images import DataBundle, Split
from vistream.models.decoupling.decouple import DecoupledResNet
from vistream.models.decoupling.evaluate import run_evaluation
from vistream.models.decoupling.finetune import DecoupleConfig, finetune


def _tiny_data(n=24, classes=3):
    rng = np.random.default_rng(0)

    def split():
        y = np.arange(n) % classes
        x = rng.random((n, 3, 32, 32), dtype=np.float32) * 0.3
        x[np.arange(n), y] += 0.6  # the class is the brightest channel
        return Split(x.clip(0, 1), y.astype(np.int64))

    return DataBundle("tiny", split(), split(), split(), classes, ["a", "b", "c"])


def test_finetune_then_evaluate_end_to_end(tmp_path):
    torch.manual_seed(0)
    data = _tiny_data()
    backbone = create_model("resnet20", num_classes=3)
    model = DecoupledResNet(backbone)
    cfg = DecoupleConfig(epochs=1, batch_size=12, lambda_s=0.5, threads=1, augment=False)
    summary = finetune(model, data, cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    assert (tmp_path / "run" / "best.pt").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 1
    assert 0 <= summary["best"]["active"] <= 1
    base = create_model("resnet20", num_classes=3).eval()
    res = run_evaluation(tmp_path / "run" / "best.pt", base, data, tmp_path / "eval", ["fgsm"],
                         adv_n=12, latency_images=2, latency_rounds=1, progress=False)
    assert (tmp_path / "eval" / "paths.png").stat().st_size > 1000
    assert res["flops"]["dense"] > 0 and res["flops"]["skipped"] <= 1
    assert res["latency"]["ms_per_image_median"]["sparse"] > 0
    assert res["latency"]["speedup_vs_same_runtime"] > 0
    assert 0 <= res["adversarial"]["fgsm"]["auroc_all"] <= 1
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["dataset"] == "tiny"
