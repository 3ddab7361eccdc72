"""`vistream import`: help, the printed manifest summary, and one-line errors (exit 2) for
files it cannot use; `train binary --init` refuses a graph it cannot start from."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vistream.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
tv = pytest.importorskip("torchvision")


def test_help_names_the_options():
    res = subprocess.run([sys.executable, "-m", "vistream", "import", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for opt in ("--arch", "--input-size", "--mean", "--std", "--num-classes", "--out"):
        assert opt in res.stdout


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("import")
    torch.manual_seed(0)
    torch.save({"epoch": 2, "state_dict": tv.models.resnet18(num_classes=3).state_dict()}, d / "w.pth")
    return d / "w.pth"


def test_import_prints_the_manifest_summary(weights, tmp_path):
    out = tmp_path / "r18.vsa"
    res = CliRunner().invoke(app, ["import", str(weights), "--arch", "resnet18", "-o", str(out),
                                   "--input-size", "64", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output.strip().splitlines()[-1])
    assert info["arch"] == "resnet18" and info["num_classes"] == 3 and info["prunable"]
    assert info["input_size"] == [64, 64] and info["mean"] == [0.5] * 3
    assert info["source"]["kind"] == "torchvision" and out.exists()


@pytest.mark.parametrize("args,msg", [
    (["--arch", "vgg16"], "unsupported torchvision architecture"),
    ([], "give --arch"),
    (["--arch", "resnet18", "--num-classes", "1000"], "classifier has 3 outputs"),
])
def test_unusable_inputs_are_one_line_errors(weights, tmp_path, args, msg):
    res = CliRunner().invoke(app, ["import", str(weights), "-o", str(tmp_path / "x.vsa"), *args])
    assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.vsa").exists()


def test_bad_normalisation_is_a_usage_error(weights, tmp_path):
    res = CliRunner().invoke(app, ["import", str(weights), "--arch", "resnet18", "-o",
                                   str(tmp_path / "x.vsa"), "--std", "0.2,0.2"])
    assert res.exit_code == 2 and "three comma-separated numbers" in res.output


def test_train_binary_refuses_a_start_without_a_one_bit_twin(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, 8, 8), tmp_path / "n.onnx", dynamo=False,
                          input_names=["input"], output_names=["logits"])
    res = CliRunner().invoke(app, ["import", str(tmp_path / "n.onnx"), "-o", str(tmp_path / "n.vsa")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["arch"] == "onnx_graph"
    res = CliRunner().invoke(app, ["train", "binary", "--method", "xnor", "--init", str(tmp_path / "n.vsa")])
    assert res.exit_code == 2 and "no 1-bit twin" in res.output
    res = CliRunner().invoke(app, ["train", "binary", "--method", "rbcn", "--teacher",
                                   str(tmp_path / "n.vsa")])
    assert res.exit_code == 2 and "--teacher" in res.output and "no 1-bit twin" in res.output



def test_compress_abc_prunes_an_imported_artifact(weights, tmp_path):
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for c in ("cats", "dogs"):  # a tiny ImageFolder: 2 classes of 10 noise images
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(str(tmp_path / "imgs" / c / f"{i}.png"), rng.integers(0, 255, (32, 32, 3), np.uint8))
    base = tmp_path / "r18.vsa"
    assert CliRunner().invoke(app, ["import", str(weights), "--arch", "resnet18", "-o", str(base),
                                    "--input-size", "32"]).exit_code == 0
    res = CliRunner().invoke(app, ["compress", "abc", "--base", str(base), "--dataset",
                                   f"imagefolder:{tmp_path / 'imgs'}", "--cycles", "1", "--food", "2",
                                   "--limit", "1", "--fitness-subset", "8", "--finetune-epochs", "0",
                                   "--flops-target", "0.6", "--out", str(tmp_path / "abc"),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "3 classes, the dataset 2: a new seeded classifier" in res.output  # --arch from --base
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["flops_ratio"] <= 0.6 and out["artifact"].endswith("abc-resnet18.vsa")
