"""``vistream bench binary``: the bit-packed 1-bit runtime against torch float32, same run.

Measurements, all in one process, ``threads`` torch threads and as many kernel threads:

1. **conv**: one 3x3 binary conv, 256 -> 256 channels, 14x14, batch 1, stride 1, padding 1
   (:class:`~models.binary.packed.PackedBinaryConv2d`: sign packing + XNOR/popcount GEMM +
   alpha) vs ``torch.nn.functional.conv2d`` in float32 of the same shape.
2. **resnet18**: a whole 1-bit ResNet-18 (``BinaryResNet(layout="imagenet")``, Bi-Real units,
   float stem/shortcuts/fc, 1000 classes) at 224x224, batch 1, packed, vs its float32 twins:
   ``create_model("resnet18")`` (torchvision layout; the ratio the target refers to), the same
   twin in its deployed form (``models.deploy.optimize_for_cpu``: BatchNorm folded,
   channels-last; reported beside the target ratio because the packed network's stem runs
   channels-last too), and the same Bi-Real layout with every binary conv a float
   ``nn.Conv2d`` (``bireal_float``).

Each round measures every contender back to back in alternating order (so machine noise hits
them alike); a contender's round figure is the fastest of ``calls`` calls. Parts 1 and 2 run
on the kernel the extension chose at load (the widest the CPU offers, or
``VISTREAM_KERNEL=avx512|avx2|portable``); the last line names it (``kernel``) with the
kernels available and the CPU's features. The headline is the fastest time over all rounds
(the ``timeit`` convention, as ``bench backbone``: on a shared CPU the minimum is the least
disturbed run) and ``ratio`` = baseline min / packed min; the spread (min, max) of the
per-round ratios and the per-round medians of both show the noise.

3. **exactness**: the packed ResNet-18's logits and features equal the float (training-time
   eval) forward bit for bit, and the packed conv equals ``conv2d(sign(x), W_b) * alpha`` for a
   sweep of odd shapes (channels not divisible by 64, strides 1/2, paddings 0/1/2, kernels 1/3)
   on every kernel this CPU runs.
3b. **kernels**: the conv of part 1 on each kernel the CPU runs (``avx512``, ``avx2``,
   ``portable``), each against torch fp32 interleaved in its own block.
4. **artifact**: bytes of the 1-bit artifact of that ResNet-18 vs the same network written as a
   float32 artifact.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vistream.bench.machine import cpu_model
from vistream.models.artifacts import export_artifact
from vistream.models.backbones import create_model
from vistream.models.binary.layers import BinaryConv2d, BinaryResNet, hard_sign
from vistream.models.binary.packed import (
    PackedBinaryConv2d,
    export_binary_artifact,
    kernel_info,
    to_packed,
    use_kernel,
)
from vistream.models.deploy import optimize_for_cpu
from vistream.models.flops import interleaved_timings

TARGET_CONV = 8.0
TARGET_NET = 4.0


def _summary(times: dict[str, list[float]], ours: str, base: str) -> dict:
    ratios = [b / a for a, b in zip(times[ours], times[base])]
    return {f"{ours}_ms": round(min(times[ours]), 4), f"{base}_ms": round(min(times[base]), 4),
            "ratio": round(min(times[base]) / min(times[ours]), 2),
            "ratio_median_round": round(statistics.median(ratios), 2),
            "ratio_spread": [round(min(ratios), 2), round(max(ratios), 2)]}


def _random_bn(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _conv_sweep_all_kernels() -> dict[str, str]:
    out = {}
    for name in kernel_info()["available"]:
        with use_kernel(name):
            ok, total = _conv_sweep_exact()
        out[name] = f"{ok}/{total}"
    return out


def _conv_by_kernel(x, w, conv, threads: int, rounds: int, calls: int) -> dict[str, dict]:
    """Part 3b: the conv on every available kernel vs torch fp32, one interleaved block each."""
    out = {}
    for name in kernel_info()["available"]:
        with use_kernel(name):
            packed_conv = PackedBinaryConv2d.from_binary(conv, threads=threads)
            t = interleaved_timings({"packed": lambda m=packed_conv: m(x),
                                     "torch_fp32": lambda: F.conv2d(x, w, None, 1, 1)}, rounds, calls)
        out[name] = {"packed_ms": round(min(t["packed"]), 4), "torch_fp32_ms": round(min(t["torch_fp32"]), 4),
                     "ratio": round(min(t["torch_fp32"]) / min(t["packed"]), 2)}
    return out


def _conv_sweep_exact() -> tuple[int, int]:
    g = torch.Generator().manual_seed(0)
    ok = total = 0
    for c in (3, 63, 65, 130):
        for o in (5, 64, 70):
            for k, s, p in ((1, 1, 0), (3, 1, 1), (3, 2, 1), (3, 2, 2), (3, 1, 0), (1, 2, 0)):
                x = torch.randn(2, c, 9, 8, generator=g)
                wb = torch.where(torch.rand(o, c, k, k, generator=g) < 0.5, -1.0, 1.0)
                alpha = torch.rand(o, generator=g)
                m = PackedBinaryConv2d(c, o, k, s, p)
                m.set_weights(wb, alpha)
                ref = F.conv2d(hard_sign(x), wb, None, s, p) * alpha.view(1, -1, 1, 1)
                ok += int(torch.equal(m(x), ref))
                total += 1
    return ok, total


def bench_binary(threads: int = 2, repeats: int = 5, quick: bool = False,
                 echo: Callable[[str], None] = print) -> dict:
    info = kernel_info()
    if info.get("error"):
        raise RuntimeError(info["error"])
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rounds = max(2, repeats if not quick else min(repeats, 3))
    try:
        with torch.inference_mode(), tqdm(total=2 * rounds, desc="bench binary", leave=False) as bar:
            # 1. one conv
            conv = BinaryConv2d(256, 256, 3, 1, 1)
            packed_conv = PackedBinaryConv2d.from_binary(conv, threads=threads)
            x = torch.randn(1, 256, 14, 14)
            w = torch.randn(256, 256, 3, 3)
            conv_t = interleaved_timings({"packed": lambda: packed_conv(x),
                                   "torch_fp32": lambda: F.conv2d(x, w, None, 1, 1)},
                                  rounds, 20 if quick else 50, bar.update)
            conv_res = {"shape": "1x256x14x14, 3x3, 256->256, stride 1, pad 1",
                        **_summary(conv_t, "packed", "torch_fp32"), "target": TARGET_CONV}
            echo(json.dumps({"part": "conv", **conv_res, "rounds_ms": conv_t}))

            # 2. ResNet-18 at 224
            binary = BinaryResNet(depth=18, layout="imagenet", num_classes=1000, base=64).eval()
            _random_bn(binary, 1)
            packed = to_packed(binary, threads=threads)
            fp32 = create_model("resnet18", num_classes=1000).eval()
            fp32_deployed = optimize_for_cpu(fp32, input_size=(224, 224))
            bireal = BinaryResNet(depth=18, layout="imagenet", num_classes=1000, base=64,
                                  conv=lambda i, o, k, s, p: nn.Conv2d(i, o, k, s, p, bias=False)).eval()
            img = torch.randn(1, 3, 224, 224)
            net_t = interleaved_timings({"packed": lambda: packed(img), "resnet18_fp32": lambda: fp32(img),
                                  "resnet18_fp32_deployed": lambda: fp32_deployed(img),
                                  "bireal_fp32": lambda: bireal(img)},
                                 rounds, 1 if quick else 3, bar.update)
            net_res = {"input": "1x3x224x224", **_summary(net_t, "packed", "resnet18_fp32"),
                       "fp32_deployed_ms": round(min(net_t["resnet18_fp32_deployed"]), 3),
                       "ratio_vs_fp32_deployed": round(min(net_t["resnet18_fp32_deployed"])
                                                       / min(net_t["packed"]), 2),
                       "bireal_fp32_ms": round(min(net_t["bireal_fp32"]), 3),
                       "ratio_vs_bireal_fp32": round(min(net_t["bireal_fp32"]) / min(net_t["packed"]), 2),
                       "target": TARGET_NET}
            echo(json.dumps({"part": "resnet18", **net_res, "rounds_ms": net_t}))

            # 3. exactness
            probe = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
            logits_equal = torch.equal(packed(probe), binary(probe))
            feats_equal = torch.equal(packed.forward_features(probe), binary.forward_features(probe))
            sweeps = _conv_sweep_all_kernels()
            sweep_ok = all(v.split("/")[0] == v.split("/")[1] for v in sweeps.values())
            exact = {"resnet18_logits_equal": logits_equal, "resnet18_features_equal": feats_equal,
                     "argmax_equal": bool(torch.equal(packed(probe).argmax(1), binary(probe).argmax(1))),
                     "conv_shapes_equal": sweeps[info["option"]],
                     "conv_shapes_equal_by_kernel": sweeps}
            echo(json.dumps({"part": "exactness", **exact}))
            by_kernel = _conv_by_kernel(x, w, conv, threads, rounds, 10 if quick else 30)
            echo(json.dumps({"part": "kernels", "conv_by_kernel": by_kernel}))

        # 4. artifact sizes
        with tempfile.TemporaryDirectory() as tmp:
            man = export_binary_artifact(binary, Path(tmp) / "b.vsa", method="random-init",
                                         input_spec={"size": [224, 224], "channels": 3, "color": "RGB"})
            twin = create_model("binary_resnet18", **man["config"])
            twin.load_state_dict(binary.state_dict(), strict=False)
            export_artifact(twin, Path(tmp) / "f.vsa", method="fp32", onnx=False,
                            input_spec={"size": [224, 224], "channels": 3, "color": "RGB"})
            packed_bytes = (Path(tmp) / "b.vsa").stat().st_size
            fp32_bytes = (Path(tmp) / "f.vsa").stat().st_size
        art = {"packed_artifact_bytes": packed_bytes, "fp32_artifact_bytes": fp32_bytes,
               "fp32_over_packed": round(fp32_bytes / packed_bytes, 2),
               "binary_weights": man["binary"]["size"]["binary_weights"],
               "binary_weight_bytes": man["binary"]["size"]["binary_weight_bytes"]}
        echo(json.dumps({"part": "artifact", **art}))
    finally:
        torch.set_num_threads(old_threads)
    exact_all = logits_equal and feats_equal and sweep_ok
    return {"bench": "binary", "cpu": cpu_model(), "threads": threads, "rounds": rounds,
            "kernel": info["kernel"], "kernels_available": info["available"],
            "kernels_compiled": info["compiled"], "cpu_features": info["cpu_features"],
            "conv_ratio_by_kernel": {k: v["ratio"] for k, v in by_kernel.items()},
            "torch": torch.__version__,
            "conv_packed_ms": conv_res["packed_ms"], "conv_torch_fp32_ms": conv_res["torch_fp32_ms"],
            "conv_ratio": conv_res["ratio"], "conv_ratio_median_round": conv_res["ratio_median_round"],
            "conv_ratio_spread": conv_res["ratio_spread"],
            "resnet18_packed_ms": net_res["packed_ms"], "resnet18_fp32_ms": net_res["resnet18_fp32_ms"],
            "resnet18_ratio": net_res["ratio"], "resnet18_ratio_median_round": net_res["ratio_median_round"],
            "resnet18_ratio_spread": net_res["ratio_spread"],
            "resnet18_fp32_deployed_ms": net_res["fp32_deployed_ms"],
            "resnet18_ratio_vs_fp32_deployed": net_res["ratio_vs_fp32_deployed"],
            "bireal_fp32_ms": net_res["bireal_fp32_ms"], "resnet18_ratio_vs_bireal_fp32":
                net_res["ratio_vs_bireal_fp32"],
            "exact": exact_all, **{f"exact_{k}": v for k, v in exact.items()},
            "artifact_packed_bytes": packed_bytes, "artifact_fp32_bytes": fp32_bytes,
            "artifact_fp32_over_packed": art["fp32_over_packed"],
            "targets": {"conv_ratio": TARGET_CONV, "resnet18_ratio": TARGET_NET},
            "targets_met": {"conv": conv_res["ratio"] >= TARGET_CONV,
                            "resnet18": net_res["ratio"] >= TARGET_NET},
            "timing": "fastest call over interleaved rounds (ratio = baseline min / packed min); "
                      "spread = min/max of the per-round ratios"}
